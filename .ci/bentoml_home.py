"""Make this project's BentoML store its venv's default: a plain `bentoml serve service:SentimentAPI` or `bentoml
build` in a fresh shell then finds the models `make` exported into ./.bentoml, as `make serve` does.

`make install` runs it: it writes a .pth file into the venv (Python runs its `import` line at start-up) that sets
BENTOML_HOME only when it is unset, so an explicit BENTOML_HOME still wins. tests/test_config.py checks it.
"""

import site
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PTH = Path(site.getsitepackages()[0]) / "imdb_sentiment_bentoml_home.pth"

if __name__ == "__main__":
    PTH.write_text(f"import os; os.environ.setdefault('BENTOML_HOME', {str(ROOT / '.bentoml')!r})\n")
    print(f"{PTH}: BENTOML_HOME defaults to {ROOT / '.bentoml'}")
