"""A/B traffic: real labelled IMDb test reviews sent to a running service by many users, and the labels fed back.

    python -m loadtests.ab_traffic [url=http://127.0.0.1:3000] [reviews=2000] [users=400]   (make ab-traffic)

Review i goes to `/predict` as user `user-<i mod users>` (its `x-user-id`), a few at a time; the reviews and their
true labels are written to `labels` for `make ab-report LABELS=...`, which joins them to the service's prediction
log by the text's digest.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import requests

from loadtests.common import sample_labelled
from training.config import command_line


@dataclass
class ABTrafficConfig:
    url: str = "http://127.0.0.1:3000"
    reviews: int = 2000
    users: int = 400
    concurrency: int = 4
    seed: int = 0
    labels: str = "build/ab/labels.parquet"


def run(config: ABTrafficConfig) -> Counter:
    """Statuses and answering variants of every request; the labels file written."""
    texts, labels = sample_labelled(config.reviews, config.seed)

    def send(i: int) -> tuple[int, str | None]:
        response = requests.post(
            f"{config.url}/predict",
            json={"text": texts[i]},
            headers={"x-user-id": f"user-{i % config.users}"},
            timeout=60,
        )
        return response.status_code, response.headers.get("x-model-variant")

    with ThreadPoolExecutor(config.concurrency) as pool:
        answered = Counter(pool.map(send, range(len(texts))))
    Path(config.labels).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text": texts, "label": labels}).to_parquet(config.labels)
    return answered


def main() -> None:
    config, _ = command_line(ABTrafficConfig, __doc__)
    for (status, variant), count in sorted(run(config).items(), key=str):
        print(f"{count} requests: {status} from {variant}")
    print(f"labels of the {config.reviews} reviews sent: {config.labels}")


if __name__ == "__main__":
    main()
