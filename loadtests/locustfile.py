"""The mixed profile: Locust users sending real IMDb test reviews, one per `/predict` (8 of 9 requests) or 2 to 8 per
`/predict_batch` (1 of 9), with a think time of 10 to 50 ms."""

from __future__ import annotations

import random

from locust import HttpUser, between, task

from loadtests.common import sample_reviews

REVIEWS = sample_reviews()


class ReviewUser(HttpUser):
    wait_time = between(0.01, 0.05)

    @task(8)
    def predict(self) -> None:
        self.client.post("/predict", json={"text": random.choice(REVIEWS)}, name="/predict")

    @task(1)
    def predict_batch(self) -> None:
        self.client.post(
            "/predict_batch", json={"texts": random.sample(REVIEWS, random.randint(2, 8))}, name="/predict_batch"
        )
