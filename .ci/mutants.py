"""The planted mutants that the suite must kill: each is put into the code,
its guarding tests are run, and the file is restored (also on Ctrl-C).

  python .ci/mutants.py                # all, about 7 minutes on 2 cores
  python .ci/mutants.py gamma FreeLB   # those whose names contain a word

Prints CAUGHT or MISSED per mutant; exits 1 if any was missed. Not run by
.ci/run (it reruns tests many times); run it after changing a test that
guards one of these, and add a line here for each new mutation you check.
Commit nothing while it runs: the mutant is in the working tree.
"""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (name, file, original text, mutated text, pytest arguments)
MUTANTS = [
  (
    "ModernBERT's sliding window one token narrower",
    'rose_jax/models/modernbert.py',
    'index[None, :]) <= c.local_attention // 2',
    'index[None, :]) < c.local_attention // 2',
    'tests/models/test_modernbert.py -k match_transformers',
  ),
  (
    "DeBERTa's p2c scores not transposed to query x key",
    'rose_jax/models/deberta.py',
    'scores = scores + jnp.swapaxes(p2c, -1, -2) / scale',
    'scores = scores + p2c / scale',
    'tests/models/test_deberta.py -k match_transformers',
  ),
  (
    "DeBERTa's c2p relative positions one bucket off",
    'rose_jax/models/deberta.py',
    'index = jnp.clip(relative + span, 0, 2 * span - 1)',
    'index = jnp.clip(relative + span + 1, 0, 2 * span - 1)',
    'tests/models/test_deberta.py -k "match_transformers or packed or loads_back"',
  ),
  (
    "ModernBERT's attention scores without their 1/sqrt(head_dim) scale",
    'rose_jax/models/modernbert.py',
    ".astype(jnp.float32) * c.head_dim ** -0.5",
    ".astype(jnp.float32)",
    'tests/models/test_modernbert.py -k "match_transformers or packed or loads_back"',
  ),
  (
    "DeBERTa's log buckets rounded down",
    'rose_jax/models/deberta.py',
    'log_pos = jnp.ceil(',
    'log_pos = jnp.floor(',
    'tests/models/test_deberta.py -k buckets',
  ),
  (
    'sweep member trains on the whole batch, not its data shard',
    'rose_jax/training/sweep.py',
    'P(MEMBERS, DATA) if data_parallel else members,',
    'members,',
    'tests/training/test_sweep.py -k sharded',
  ),
  (
    "ensemble masks recorded at the run's settings, not the member's",
    'rose_jax/glue/trainers.py',
    '**{k: swept.get(k, v) for k, v in settings.items()})',
    '**settings)',
    'tests/glue/test_sweep.py -k mask_file',
  ),
  (
    'rose_masks ignores the clipping',
    'rose_jax/transform.py',
    "variant='ensemble', max_grad_norm=max_grad_norm,",
    "variant='ensemble', max_grad_norm=None,",
    'tests/test_transform.py -k rose_masks',
  ),
  (
    'a resumed sweep mixes started and fresh members',
    'rose_jax/glue/sweep.py',
    'for group in (started, fresh)',
    'for group in (started + fresh,)',
    'tests/glue/test_sweep.py -k groups',
  ),
  (
    'non-finite extra gradients not skipped',
    'rose_jax/_src/rule.py',
    'ok = jnp.all(jnp.asarray(finite))',
    'ok = jnp.asarray(True)',
    'tests/test_transform.py tests/test_selective.py -k non_finite',
  ),
  (
    'checkpoint position swapped on restore',
    'rose_jax/glue/records.py',
    "epoch=int(position['epoch']), batch=int(position['batch'])",
    "epoch=int(position['batch']), batch=int(position['epoch'])",
    'tests/glue/test_records.py',
  ),
  (
    "a resumed run's dropout key not the checkpoint's",
    'rose_jax/glue/records.py',
    "dropout_key=np.asarray(tree['dropout_key'])",
    "dropout_key=np.asarray(tree['dropout_key']) + 1",
    'tests/glue/test_resume.py tests/glue/test_families.py -k "bit_identical or resumes_exactly"',
  ),
  (
    'KL halved',
    'rose_jax/_src/losses.py',
    'jnp.sum(q * (log_q - log_p))) / 4.0',
    'jnp.sum(q * (log_q - log_p))) / 8.0',
    'tests/_src/test_losses.py tests/training/test_step.py -k "losses or gradients_it_asks"',
  ),
  (
    'KL without device scaling',
    'rose_jax/training/gradients.py',
    'scale = devices if objective.consistency_sums else 1',
    'scale = 1',
    'tests/training/test_step.py -k global',
  ),
  (
    'eps inside the corrected root',
    'rose_jax/_src/rule.py',
    'lambda m_, mu_, nu_: m_ * step_factor * mu_ / (jnp.sqrt(nu_) + eps),',
    'lambda m_, mu_, nu_: m_ * step_factor * mu_ / (jnp.sqrt(nu_) + eps * jnp.sqrt(correction2)),',
    'tests/test_alias.py tests/test_transform.py',
  ),
  (
    'gamma swapped',
    'rose_jax/masking.py',
    'gamma * f + (1.0 - gamma) * s',
    '(1.0 - gamma) * f + gamma * s',
    'tests/test_masking.py tests/test_selective.py -k "ensemble or authors"',
  ),
  (
    'ensemble = first mask',
    'rose_jax/masking.py',
    'gamma * f + (1.0 - gamma) * s',
    'f + 0 * s',
    'tests/test_masking.py',
  ),
  (
    'ce_grads not clipped',
    'rose_jax/_src/rule.py',
    'return tuple(clip_like_global_norm(updates, (kl_grads, ce_grads), max_grad_norm))',
    'u, k, _ = clip_like_global_norm(updates, (kl_grads, ce_grads), max_grad_norm); return u, k, ce_grads',
    'tests/test_transform.py tests/test_alias.py -k clip',
  ),
  (
    'replicate from host arrays',
    'rose_jax/training/step.py',
    '  return jax.pmap(lambda t: t, axis_name=axis_name)(stacked)',
    '  return stacked',
    'tests/training/test_step.py -k "pmap and (compile or repeat)"',
  ),
  (
    'SMART descending',
    'rose_jax/baselines/adversarial.py',
    '      noise = noise + self.step_size * grad\n',
    '      noise = noise - self.step_size * grad\n',
    'tests/baselines/test_adversarial.py -k smart',
  ),
  (
    'SMART first KL not detached',
    'rose_jax/baselines/adversarial.py',
    'regulariser = (_kl(jax.lax.stop_gradient(adv), clean) + _kl(target, adv)) / batch',
    'regulariser = (_kl(adv, clean) + _kl(target, adv)) / batch',
    'tests/baselines/test_adversarial.py -k smart',
  ),
  (
    'FreeLB without /K',
    'rose_jax/baselines/adversarial.py',
    'return task_loss(logits, labels) / self.steps, logits',
    'return task_loss(logits, labels), logits',
    'tests/baselines/test_adversarial.py -k freelb',
  ),
  (
    'FreeLB without its linf clip',
    'rose_jax/baselines/adversarial.py',
    '        delta = jnp.clip(delta, -self.max_norm, self.max_norm)',
    '        delta = delta',
    'tests/baselines/test_adversarial.py -k freelb',
  ),
  (
    'Fisher with no per-tensor clip',
    'rose_jax/baselines/fisher.py',
    'jnp.square(clip(g))',
    'jnp.square(g)',
    'tests/baselines/test_fisher.py',
  ),
  (
    "R-Drop alpha on ROSE's scale",
    'rose_jax/training/methods.py',
    '    return 2.0 * self.kl_weight',
    '    return self.kl_weight',
    'tests/training/test_step.py -k gradients_it_asks',
  ),
  (
    'params_ema without its copy',
    'rose_jax/baselines/params_ema.py',
    'jnp.array(p, jnp.float32, copy=True)',
    'p',
    'tests/baselines/test_params_ema.py tests/glue/test_resume.py -k "params_ema or smart"',
  ),
  (
    'selective: no coasting',
    'rose_jax/selective.py',
    '(m * g + (1 - m) * mu_).astype(g.dtype)',
    '(m * g + 0 * mu_).astype(g.dtype)',
    'tests/test_selective.py',
  ),
  (
    'selective: update not masked',
    'rose_jax/selective.py',
    'new_updates = jax.tree.map(lambda u, m: (m * u).astype(u.dtype), inner_updates, full)',
    'new_updates = inner_updates',
    'tests/test_selective.py',
  ),
  (
    'glue optimizers: no clipping',
    'rose_jax/glue/optimizers.py',
    '  if config.max_grad_norm:\n    return optax.chain',
    '  if False:\n    return optax.chain',
    'tests/glue/test_optimizers.py',
  ),
  (
    'glue optimizers: upper/lower swapped',
    'rose_jax/glue/optimizers.py',
    'upper=config.upper, lower=config.lower',
    'upper=config.lower, lower=config.upper',
    'tests/glue/test_optimizers.py',
  ),
  (
    'evaluation keeps filler rows',
    'rose_jax/glue/evaluation.py',
    'predictions.append(self._gather(self._predict(params, inputs))[:real])',
    'predictions.append(self._gather(self._predict(params, inputs)))',
    'tests/glue/test_evaluation.py',
  ),
  (
    'report: population std -> sample std',
    'rose_jax/glue/report.py',
    'np.std(values):.2f}',
    'np.std(values, ddof=1):.2f}',
    'tests/glue/test_report.py',
  ),
  (
    'report: labels cut to the bare method',
    'rose_jax/glue/labels.py',
    "labels.append(config['method'] + (",
    "labels.append(config['method'] + 0 * (",
    'tests/glue/test_report.py tests/glue/test_sweep.py -k "report or other_settings"',
  ),
  (
    'mask file keeps rows after the checkpoint',
    'rose_jax/glue/writers.py',
    "kept = kept[kept['step'] <= step]",
    'kept = kept',
    'tests/glue/test_writers.py',
  ),
  (
    'metrics trim keeps later epochs',
    'rose_jax/glue/writers.py',
    "(record.get('epoch', 0), last_epoch) if record.get('type') == 'epoch'",
    "(0, last_epoch) if record.get('type') == 'epoch'",
    'tests/glue/test_writers.py',
  ),
  (
    'data: fractional labels truncated',
    'rose_jax/glue/data.py',
    '  if not float(value).is_integer():',
    '  if False:',
    'tests/glue/test_data.py',
  ),
  (
    'checkpoint fallback disabled',
    'rose_jax/glue/checkpoints.py',
    '      failures.append(str(error))\n      log.warning',
    '      raise\n      log.warning',
    'tests/glue/test_checkpoints.py',
  ),
  (
    'sweep settings not applied',
    'rose_jax/training/sweep.py',
    '    return state._replace(hyperparams=hyperparams)',
    '    return state',
    'tests/training/test_sweep.py tests/glue/test_sweep.py -k equals',
  ),
  (
    'process entry does not set malloc',
    'rose_jax/glue/cli.py',
    '  cpu_malloc.keep_freed_memory()\n  logging.basicConfig',
    '  logging.basicConfig',
    'tests/glue/test_cli.py',
  ),
  (
    'mt-dnn double embedding (LayerNorm twice when perturbed)',
    'rose_jax/models/encoder.py',
    'return layers.add(layers.dropout(c.hidden_dropout_prob, self.LayerNorm(x), rngs),',
    'return layers.add(layers.dropout(c.hidden_dropout_prob, self.LayerNorm(self.LayerNorm(x) '
    'if perturbation.output is not None else x), rngs),',
    'tests/baselines/test_adversarial.py',
  ),
  (
    'FreeLB fresh dropout per pass',
    'rose_jax/baselines/adversarial.py',
    'logits = apply(p, EmbeddingPerturbation(word=d), dropout_key)  # same masks each pass',
    'logits = apply(p, EmbeddingPerturbation(word=d), jax.random.fold_in(dropout_key, jnp.sum(d).astype(jnp.int32)))',
    'tests/baselines/test_adversarial.py -k freelb',
  ),
  (
    'CHILD-TUNING_D: mask after Adam (decay masked)',
    'rose_jax/baselines/child_tuning.py',
    '      keep_fixed_mask(mask),\n      hf_adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,\n               weight_decay_mask=weight_decay_mask))',
    '      hf_adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,\n               weight_decay_mask=weight_decay_mask), keep_fixed_mask(mask))',
    'tests/baselines/test_child_tuning.py',
  ),
  (
    'landscape: kernel filters taken as rows',
    'rose_jax/analysis/landscape.py',
    "  if name == 'kernel':\n    return tuple(range(jnp.ndim(leaf) - 1))",
    "  if name == 'kernel':\n    return tuple(range(1, jnp.ndim(leaf)))",
    'tests/analysis/test_landscape.py',
  ),
  (
    'disagreement counts padded rows',
    'rose_jax/analysis/disagreement.py',
    'predictions = predictions[:, keep]',
    'pass',
    'tests/analysis/test_disagreement.py',
  ),
  (
    'the refreshed risks kept one update too long',
    'rose_jax/_src/refresh.py',
    'due_next = optax.safe_increment(count) % every == 0',
    'due_next = count % every == 0',
    'tests/_src/test_refresh.py',
  ),
  (
    "a sub-batch's KL not scaled to the whole batch's",
    'rose_jax/training/gradients.py',
    'kl_scale = (n_kl + n_rest) / n_kl if objective.consistency_sums else 1.0',
    'kl_scale = 1.0',
    'tests/training/test_sub_batch.py',
  ),
  (
    "a sub-batch's rest drawing the kl part's dropout",
    'rose_jax/training/gradients.py',
    'batch.rest, jax.random.fold_in(key, 1), labels_rest',
    'batch.rest, key, labels_rest',
    'tests/training/test_sub_batch.py',
  ),
  (
    "the report's average taking in probing conditions",
    'rose_jax/glue/report.py',
    'if cell is not None and cell.scores and name in SET_TITLES:',
    'if cell is not None and cell.scores:',
    'tests/glue/test_probing.py -k figure',
  ),
  (
    "Table 4 reporting a step after a run's last",
    'rose_jax/glue/paper_tables.py',
    "before[-1]['disagreement'] if before and step <= last else None",
    "before[-1]['disagreement'] if before else None",
    'tests/glue/test_paper_tables.py -k table_4',
  ),
  (
    'dropout draws the same key twice',
    'rose_jax/models/layers.py',
    'stream.count.set_value(count + 1)',
    'stream.count.set_value(count)',
    'tests/models/test_layers.py',
  ),
  (
    "a ratio against another method's row taken against the method's own",
    'benchmarks/e2e_benchmark.py',
    "base = by.get(tuple(against.split(' ', 1)))",
    "base = by.get((method, against.split(' ', 1)[1]))",
    'tests/benchmarks/test_e2e_benchmark.py -k rows_ratio',
  ),
  (
    "the end-to-end benchmark's cheaper risks timed unpacked",
    'benchmarks/e2e_benchmark.py',
    "  packed = mode.startswith('packed')",
    "  packed = mode == 'packed'",
    'tests/benchmarks/test_e2e_benchmark.py -k each_padding',
  ),
  (
    "a run's label told apart by its folder's name, alike in other output roots",
    'rose_jax/glue/labels.py',
    "label = f'{label[:-1]}; {Path(run[\"path\"])})'",
    "label = f'{label[:-1]}; {Path(run[\"path\"]).name})'",
    'tests/glue/test_labels.py',
  ),
  (
    "a row's seeds drawn as runs of their own in the curves' legend",
    'rose_jax/glue/plots.py',
    "  legends = {label: data.get('legend', label) for label, data in runs.items()}",
    '  legends = {label: label for label in runs}',
    'tests/glue/test_labels.py',
  ),
]


def main(only: list[str]) -> int:
  missed = 0
  for name, path, old, new, tests in MUTANTS:
    if only and not any(word in name for word in only):
      continue
    file = ROOT / path
    text = file.read_text() if file.exists() else ''
    if old not in text:
      print(f'NOT FOUND  {name}: {path} has changed or gone; update the mutant', flush=True)
      missed += 1
      continue
    file.write_text(text.replace(old, new, 1))
    try:
      start = time.time()
      done = subprocess.run(
        f'python -m pytest -x -q -p no:cacheprovider {tests}',
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
      )
      last = (done.stdout.strip().splitlines() or [''])[-1]
      verdict = {0: 'MISSED', 1: 'CAUGHT'}.get(done.returncode, f'rc {done.returncode}')
      missed += done.returncode != 1
      print(f'{verdict}  {name}  ({last[:80]}, {time.time() - start:.0f} s)', flush=True)
    finally:
      file.write_text(text)
  return int(missed > 0)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
