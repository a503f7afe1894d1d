"""``python -m rmda_jax``: the ``rmda-jax`` command line."""

from rmda_jax.app.cli import main

if __name__ == "__main__":
  raise SystemExit(main())
