"""The commands: ``rose-finetune``, ``rose-evaluate``, ``rose-analyze``,
``rose-report`` and ``rose-reproduce`` (console scripts of the package, and
``python -m rose_jax.glue.commands.NAME``); ``examples/NAME.py`` run them too."""
