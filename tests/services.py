"""Small BentoML services the tests serve beside the real one: another team's service that depends on it by URL, and
an API with a bug (the shape of a 500)."""

import os

import bentoml

from serving import errors


@bentoml.service(name="review-triage")
class Caller:
    """Calls the sentiment service by name, as a `bentoml.depends` on its URL (`SENTIMENT_URL`)."""

    sentiment = bentoml.depends(url=os.environ.get("SENTIMENT_URL", "http://127.0.0.1:3000"))

    @bentoml.api
    async def triage(self, reviews: list[str]) -> list[str]:
        """The negative reviews, for a person to read first."""
        answer = await self.sentiment.to_async.predict_batch(texts=reviews)
        return [review for review, p in zip(reviews, answer["predictions"], strict=True) if p["label"] == "neg"]


@bentoml.service(name="broken")
class Broken:
    @bentoml.api
    @errors.in_error_shape
    async def broken(self, ctx: bentoml.Context) -> dict:
        return {"labels": []}["label_names"]
