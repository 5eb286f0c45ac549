"""The PyTorch steps the benchmarks time ours against: the authors' ROSE-Ensemble
recipe and vanilla fine-tuning, each ``step(input_ids, attention_mask, labels)``.

torch is imported when a step is built, so the benchmarks run without it.
"""


def vanilla_step(model, *, lr: float = 2e-5):
  """Vanilla fine-tuning in PyTorch: one forward, CE backward, AdamW."""
  import torch
  optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

  def one_step(ids, mask, labels):
    optimizer.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask).logits
    torch.nn.functional.cross_entropy(logits, labels).backward()
    optimizer.step()

  return one_step


def rose_ensemble_step(model, *, lr: float = 1e-5, upper: float = 0.6):
  """The authors' recipe in PyTorch, ``step(input_ids, attention_mask, labels)``:
  two forwards, KL backward with a retained graph, per-tensor norms and
  torch.quantile, CE backward, masked AdamW (Hugging Face form)."""
  import torch
  named = [(n, p) for n, p in model.named_parameters()]
  ranked = [p for n, p in named if 'layer' in n and 'weight' in n]
  m = {p: torch.zeros_like(p) for _, p in named}
  v = {p: torch.zeros_like(p) for _, p in named}
  t = [0]

  def one_step(ids, mask, labels):
    t[0] += 1
    logits1 = model(input_ids=ids, attention_mask=mask).logits
    logits2 = model(input_ids=ids, attention_mask=mask).logits
    lp, lq = torch.log_softmax(logits1, -1), torch.log_softmax(logits2, -1)
    kl = ((lp.exp() * (lp - lq)).sum() + (lq.exp() * (lq - lp)).sum()) / 4
    ce = (torch.nn.functional.cross_entropy(logits1, labels)
          + torch.nn.functional.cross_entropy(logits2, labels)) / 2
    model.zero_grad()
    kl.backward(retain_graph=True)
    risk_f = torch.stack([p.grad.norm() for p in ranked])
    model.zero_grad()
    ce.backward()
    with torch.no_grad():
      risk_s = torch.stack([(0.1 * p.grad.norm() / (m[p].norm() + 1e-30) - 1).abs()
                            for p in ranked])
      masks = []
      for risk in (risk_f, risk_s):
        lo, hi = torch.quantile(risk, torch.tensor([0.0, upper]))
        masks.append(((risk >= lo) & (risk <= hi)).float())
      keep = dict(zip(ranked, (0.5 * masks[0] + 0.5 * masks[1]).tolist(), strict=True))
      for _, p in named:
        k = keep.get(p, 1.0)
        g = k * p.grad + (1 - k) * m[p]
        m[p].mul_(0.9).add_(g, alpha=0.1)
        v[p].mul_(0.98).addcmul_(g, g, value=0.02)
        step = lr * (1 - 0.98 ** t[0]) ** 0.5 / (1 - 0.9 ** t[0])
        p.addcdiv_(m[p] * k, v[p].sqrt().add_(1e-8), value=-step)
        p.mul_(1 - lr * 0.01 * k)

  return one_step
