"""What a user sees in MLflow, checked in a real browser: two tiny images trained under a job
run and tracked to a local MLflow server, then headless Chromium, driven by Playwright, clicks
through the pages a user would: the runs table sorted by a summary metric with the quality
column, the chart view with the runs' pictures and their step slider, an image run's charts, its
model's page. It saves a screenshot of each and checks the text each shows (the model-training
view, not GenAI's).

    python infra/local/ui_check.py --out docs/images        # writes mlflow_*.png, prints JSON

Needs the project installed (with its test extras), Chromium (Debian: apt-get install chromium)
and Playwright's Python package (pip install playwright; it drives the installed Chromium, no
browser download). Everything listens on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import services  # noqa: E402  (infra/local/services.py)

# Text of the GenAI view's navigation: none of it may show on our experiment's page.
GENAI_WORDS = ("Evaluation runs", "Prompts", "Judges", "Agent versions")
# Headless Chromium on a machine without network: no background connections.
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("ui_check: no Chromium found (Debian: apt-get install chromium)")


def tiny_job(tracking_uri: str, folder: Path) -> tuple[str, list[str]]:
    """Two small landscapes trained under a job run, tracked to the server: (experiment id, their
    runs)."""
    from pipeline import tracking
    from pipeline.manifest import manifest_row
    from pipeline.train_image import JobSettings, train_image
    from singan.api import config
    from singan.data.examples import landscape
    from singan.data.image import save_image

    output = str(folder / "out")
    experiment_id, parent = tracking.start_job_run(tracking_uri, "singan-fleet", None,
                                                   {"output": output, "images": 2})
    job = JobSettings(output=output, tracking_uri=tracking_uri, experiment_id=experiment_id,
                      parent_run_id=parent, num_samples=2, sifid_samples=0, device="cpu")
    results = []
    for index in range(2):
        path = folder / f"landscape_{index}.png"
        save_image(landscape(64, 96, seed=index), path)
        row = manifest_row(path.stem, path.as_uri(),
                           config("quick", max_size=64, niter=20, nfc=8, max_nfc=8), 1)
        results.append(train_image(row, job))
    tracking.end_job_run(tracking_uri, parent, {"done": 2}, [], 1.0)
    return experiment_id, [r.mlflow_run_id for r in results]


def shoot(url: str, experiment_id: str, run_id: str, model_id: str, out: Path) -> dict:
    """Open the pages in headless Chromium (Playwright), as a user would click through them,
    save a screenshot of each and return the text each shows."""
    from playwright.sync_api import sync_playwright

    base = f"{url}/#/experiments/{experiment_id}"
    texts = {}
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser(), args=BROWSER_ARGS)
        page = chromium.new_page(viewport={"width": 1500, "height": 900})

        # The runs table: the job's run expanded, sorted by a summary metric (lowest patch SWD
        # first), with the quality verdict beside it.
        page.goto(f"{base}/runs?workflowType=machine_learning")
        page.wait_for_timeout(3000)
        close_assistant(page)
        page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
        page.get_by_role("button", name="Sort: Created").click()
        page.get_by_text("final/patch_swd", exact=True).click()
        page.get_by_role("button", name="Sort: final/patch_swd").click()
        page.get_by_role("button", name="Sort ascending").click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(1000)
        page.get_by_role("button", name=re.compile("^Columns")).click()
        for column in ("Dataset", "Source", "quality", "final/diversity"):
            page.get_by_text(column, exact=True).last.click()  # the menu opens at the end
        page.keyboard.press("Escape")
        page.wait_for_timeout(1500)
        page.screenshot(path=out / "mlflow_experiment.png")
        texts["experiment"] = page.locator("body").inner_text()

        # The chart view of the two image runs: their pictures, a slider over the scales.
        page.locator('input[name="runs-view-mode"][value="CHART"]').locator("xpath=ancestor::label").click()
        page.wait_for_timeout(4000)
        page.get_by_placeholder("Search metric charts").fill("samples")
        page.wait_for_timeout(3000)
        # Its editor: the pictures larger, without the runs' 40 params above them, at the
        # last scale of the slider.
        card = page.get_by_text("samples", exact=True).locator("xpath=ancestor::div[.//button][1]")
        card.locator("button").nth(1).click()  # the card's menu
        page.get_by_role("menuitem", name=re.compile("Configure", re.I)).click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("switch").click()  # Show run parameters: off
        dialog.locator("input[type=number]").fill("3")
        dialog.locator("input[type=number]").press("Enter")
        page.wait_for_timeout(3000)
        page.screenshot(path=out / "mlflow_images.png")
        texts["images"] = dialog.inner_text()
        texts["image_sliders"] = str(dialog.get_by_role("slider").count())
        texts["images_shown"] = str(dialog.locator("img").count())
        page.keyboard.press("Escape")

        # One image run's charts, grouped by scale.
        page.goto(f"{base}/runs/{run_id}/model-metrics?workflowType=machine_learning")
        page.wait_for_timeout(3000)
        close_assistant(page)
        page.get_by_placeholder("Search metric charts").fill("s03/")
        page.wait_for_timeout(2000)
        page.screenshot(path=out / "mlflow_run_charts.png")
        texts["run_charts"] = page.locator("body").inner_text()

        # The image's model: its metrics, its source run.
        page.goto(f"{base}/models/{model_id}?workflowType=machine_learning")
        page.wait_for_timeout(3000)
        close_assistant(page)
        page.screenshot(path=out / "mlflow_model.png")
        texts["model"] = page.locator("body").inner_text()
        chromium.close()
    return texts


def close_assistant(page) -> None:
    """MLflow 3.17 opens an assistant panel beside every page; it hides half of the page."""
    button = page.get_by_role("button", name="Close")
    if button.count():
        button.first.click()
        page.wait_for_timeout(500)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ui-check-") as temp:
        temp = Path(temp)
        server = services.start_mlflow(temp / "mlflow", port=0)
        try:
            from mlflow import MlflowClient

            experiment_id, run_ids = tiny_job(server.url, temp)
            run = MlflowClient(server.url).get_run(run_ids[0])
            model_id = run.outputs.model_outputs[0].model_id
            texts = shoot(server.url, experiment_id, run_ids[0], model_id, args.out)
        finally:
            services.stop(["mlflow"], temp / "mlflow")
    checks = {
        # Both image runs, sorted, with their verdict and their model.
        "experiment_shows_runs_sorted_with_quality": all(
            word in texts["experiment"] for word in ("landscape_0", "landscape_1", "quality",
                                                      "final/patch_swd", "model")),
        # The image grids, with a step slider.
        "images_show_pictures_with_steps": "samples" in texts["images"]
        and int(texts["image_sliders"]) > 0 and int(texts["images_shown"]) >= 2,
        "run_charts_show_scale_groups": all(
            word in texts["run_charts"] for word in ("Model metrics", "s03", "g_loss", "d_real")),
        "model_shows_its_metrics": all(
            word in texts["model"] for word in ("final/patch_swd", "landscape_0")),
    }
    # The model-training view, not GenAI's.
    genai_words = [w for w in GENAI_WORDS if w in texts["experiment"]]
    report = {**checks, "genai_words": genai_words,
              "screenshots": sorted(str(p) for p in args.out.glob("mlflow_*.png")),
              "ok": not genai_words and all(checks.values())}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
