"""Locust users sending real IMDb test reviews to /predict (most traffic) and /predict_batch (8 at a time)."""

from __future__ import annotations

import random

from locust import HttpUser, between, task

from loadtests.common import sample_reviews

REVIEWS = sample_reviews()


class ReviewUser(HttpUser):
    wait_time = between(0.05, 0.2)

    @task(8)
    def predict(self) -> None:
        self.client.post("/predict", json={"text": random.choice(REVIEWS)}, name="/predict")

    @task(1)
    def predict_batch(self) -> None:
        self.client.post("/predict_batch", json={"texts": random.sample(REVIEWS, 8)}, name="/predict_batch")
