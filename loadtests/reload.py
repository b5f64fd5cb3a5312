"""Reload drill: exports swapped in under a mixed load, as promotions and rollbacks move the store's tag.

    python -m loadtests.reload [swaps=12] [every_s=12] [quiet_s=60]   (make reload-drill)

Two versions of the release's export under a drill name of their own (copies in the store: the release's own tag is
left alone), served with `MODEL_POLL_S=1`. Two clients send real reviews, single and batch, with a short think time:
first a quiet minute, then `swaps` moves of the drill's `latest` between the two versions (what BentoML's store does
when an export lands). Measured: refusals and the slowest answer in each swap's window against the quiet minute, and
each worker's resident memory after each swap. Writes reports/reload/reload.json and RELOAD.md with the CPU it ran on.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from loadtests.common import ROOT, MixedLoad, bentoml_serve, rss_mb, running
from serving.core.runtime import cpu_flags
from serving.settings import SETTINGS
from training.config import command_line

DRILL_MODEL = "reload-drill"


@dataclass
class ReloadConfig:
    swaps: int = 12
    every_s: float = 12.0  # between swaps: one window each, longer than a request's deadline (the old export retired)
    quiet_s: float = 60.0
    clients: int = 2
    port: int = 3012
    report: str = "reports/reload/reload.json"


def drill_versions() -> tuple[Path, list[str]]:
    """The drill's folder in the store and its two versions: copies of the release's export, made once."""
    import bentoml

    release = bentoml.models.get(SETTINGS.bento_model_tag)
    try:
        made = [str(model.tag.version) for model in bentoml.models.list(DRILL_MODEL)]
    except bentoml.exceptions.NotFound:
        made = []
    for _ in range(2 - len(made)):
        with bentoml.models.create(DRILL_MODEL, metadata=release.info.metadata) as copy:
            shutil.copytree(release.path, copy.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.yaml"))
        made.append(str(copy.tag.version))
    return Path(bentoml.models.get(f"{DRILL_MODEL}:{made[0]}").path).parent, made[:2]


def main() -> None:
    config, _ = command_line(ReloadConfig, __doc__)
    folder, versions = drill_versions()
    (folder / "latest").write_text(versions[0])
    url = f"http://127.0.0.1:{config.port}"
    env = {"BENTO_MODEL_TAG": f"{DRILL_MODEL}:latest", "MODEL_POLL_S": "1"}
    with running(bentoml_serve(config.port), f"{url}/health", env) as server, MixedLoad(url, config.clients) as load:
        quiet_start = time.perf_counter()
        time.sleep(config.quiet_s)
        quiet = load.between(quiet_start, time.perf_counter()) | {"rss_mb": rss_mb(server.pid)}
        swaps = []
        for n in range(config.swaps):
            tag = versions[(n + 1) % 2]
            (folder / "latest").write_text(tag)  # as a promotion or a rollback moves it
            start = time.perf_counter()
            time.sleep(config.every_s)
            health = requests.get(f"{url}/health", timeout=10).json()
            window = load.between(start, time.perf_counter())
            served = health["model"] == f"{DRILL_MODEL}:{tag}"
            swaps.append(window | {"to": tag, "served": served, "rss_mb": rss_mb(server.pid)})
    report = {"cpu": cpu_flags(), "config": asdict(config), "quiet": quiet, "swaps": swaps, **verdict(quiet, swaps)}
    out = ROOT / config.report
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_name("RELOAD.md").write_text(render(report))
    print(render(report))


def verdict(quiet: dict, swaps: list[dict]) -> dict:
    """The drill's three bounds: no answer slower than twice the quiet minute's slowest, no refusal the quiet minute
    did not have (per answer), and each worker's memory flat after the first swap (within a tenth)."""
    slowest = max(s["slowest_ms"] for s in swaps)
    refusal_rate = sum(s["refused"] for s in swaps) / max(sum(s["answers"] for s in swaps), 1)
    quiet_rate = quiet["refusal_rate"]
    growth = {
        service: max(s["rss_mb"][service] for s in swaps[1:]) / swaps[0]["rss_mb"][service]
        for service in swaps[0]["rss_mb"]
    }
    return {
        "slowest_ms_in_swaps": slowest,
        "refusal_rate": {"quiet": quiet_rate, "swaps": refusal_rate},
        "rss_growth_after_first_swap": {service: round(ratio, 3) for service, ratio in growth.items()},
        "holds": {
            "slowest": slowest <= 2 * quiet["slowest_ms"],
            "refusals": refusal_rate <= quiet_rate,
            "memory": all(ratio <= 1.1 for ratio in growth.values()),
            "every_swap_served": all(s["served"] for s in swaps),
            "answers_in_every_window": all(w["answers"] > 0 for w in [quiet, *swaps]),
        },
    }


def render(report: dict) -> str:
    config, quiet = report["config"], report["quiet"]
    rows = "\n".join(
        f"| {n + 1} | {s['to']} | {s['served']} | {s['answers']} | {s['refused']} | {s['slowest_ms']:.0f} | "
        f"{s['rss_mb'].get('sentiment-api', 0):.0f} | {s['rss_mb'].get('onnx-classifier', 0):.0f} |"
        for n, s in enumerate(report["swaps"])
    )
    return (
        f"# Reload drill\n\nGenerated by `make reload-drill` (`loadtests/reload.py`) on a CPU with `{report['cpu']}`: "
        f"{config['clients']} clients of a mixed load (single and batch requests of real reviews, 10 to 50 ms of "
        f"thought), a quiet {config['quiet_s']:g} s, then {config['swaps']} moves of the store's `latest` between two "
        f"versions of the release's export, one every {config['every_s']:g} s.\n\n"
        f"Quiet: {quiet['answers']} answers, {quiet['refused']} refused, slowest {quiet['slowest_ms']:.0f} ms, "
        f"memory {quiet['rss_mb']} MB. Bounds held: {report['holds']} (slowest in the swaps "
        f"{report['slowest_ms_in_swaps']:.0f} ms; refusal rate {report['refusal_rate']}; memory after the first swap "
        f"{report['rss_growth_after_first_swap']} of its level then).\n\n"
        "| swap | to | served | answers | refused | slowest ms | API worker MB | classifier MB |\n"
        "|---|---|---|---|---|---|---|---|\n" + rows + "\n"
    )


if __name__ == "__main__":
    main()
