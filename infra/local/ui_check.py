"""What a user sees first in MLflow, checked in a real browser: a tiny job tracked to a local
MLflow server, then headless Chromium renders the experiment page and one image run's charts,
saves both as screenshots and checks the rendered text (the model-training view, not GenAI's).

    python infra/local/ui_check.py --out docs/images        # writes mlflow_*.png, prints JSON

Needs the project installed (with its test extras) and Chromium (Debian: apt-get install
chromium). Everything listens on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import services  # noqa: E402  (infra/local/services.py)

# Text of the GenAI view's navigation: none of it may show on our experiment's page.
GENAI_WORDS = ("Evaluation runs", "Prompts", "Judges", "Agent versions")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--hide-scrollbars", "--window-size=1400,900",
                 "--virtual-time-budget=20000"]


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("ui_check: no Chromium found (Debian: apt-get install chromium)")


def render(url: str, screenshot: Path, profile: Path) -> str:
    """Screenshot `url` and return the text of its rendered DOM."""
    flags = [*BROWSER_FLAGS, f"--user-data-dir={profile}"]
    subprocess.run([browser(), *flags, f"--screenshot={screenshot}", url], check=True,
                   capture_output=True, timeout=180)
    dom = subprocess.run([browser(), *flags, "--dump-dom", url], check=True,
                         capture_output=True, text=True, timeout=180).stdout
    return dom


def tiny_job(tracking_uri: str, folder: Path) -> tuple[str, str]:
    """One tiny image trained under a job run, tracked to the server: (experiment id, its run)."""
    from pipeline import tracking
    from pipeline.manifest import ImageTask
    from pipeline.train_image import JobSettings, train_image
    from singan.config import config
    from singan.examples import pebbles
    from singan.image import save_image

    save_image(pebbles(40, 48, seed=1), folder / "stones.png")
    output = str(folder / "out")
    experiment_id, parent = tracking.start_job_run(tracking_uri, "singan-fleet", None,
                                                   {"output": output, "images": 1})
    task = ImageTask("stones", (folder / "stones.png").as_uri(),
                     config("quick", max_size=40, niter=20, nfc=8, max_nfc=8), 1)
    job = JobSettings(output=output, tracking_uri=tracking_uri, experiment_id=experiment_id,
                      parent_run_id=parent, num_samples=2, sifid_samples=0, device="cpu")
    result = train_image(task, job)
    tracking.end_job_run(tracking_uri, parent, [result], 1.0)
    return experiment_id, result.mlflow_run_id


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ui-check-") as temp:
        temp = Path(temp)
        server = services.start_mlflow(temp / "mlflow", port=0)
        try:
            experiment_id, run_id = tiny_job(server.url, temp)
            # The link the job prints (tracking.experiment_url): the model-training view.
            from pipeline.tracking import experiment_url

            pages = {
                "experiment": experiment_url(server.url, experiment_id),
                "run_charts": experiment_url(server.url, experiment_id, run_id),
            }
            report = {}
            for name, url in pages.items():
                shot = args.out / f"mlflow_{name}.png"
                text = render(url, shot, temp / f"profile-{name}")
                report[name] = {"url": url, "screenshot": str(shot),
                                "genai_words": [w for w in GENAI_WORDS if w in text]}
                report[name]["text"] = text
            run_text, experiment_text = report["run_charts"].pop("text"), \
                report["experiment"].pop("text")
            # The run's charts grouped by scale (s00, s01, ...), each loss a chart.
            report["run_charts"]["shows_scale_groups"] = all(
                word in run_text for word in ("Model metrics", "s00", "s03", "g_loss", "d_real"))
            # The job's parent run (its image run nested under it).
            report["experiment"]["shows_the_job_run"] = "job 20" in experiment_text
        finally:
            services.stop(["mlflow"], temp / "mlflow")
    report["ok"] = (not report["experiment"]["genai_words"]
                    and report["experiment"]["shows_the_job_run"]
                    and report["run_charts"]["shows_scale_groups"])
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
