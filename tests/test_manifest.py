"""The Parquet manifest: every bad case reported at once, per-row configs, listing a source."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pipeline.catalog import manifest_rows_from, safe_image_id, write_manifest
from pipeline.manifest import (
    OVERRIDE_COLUMNS,
    ManifestError,
    check_image_id,
    manifest_row,
    read_manifest,
    seed_for,
)
from singan.api import config
from singan.errors import InputError


def png(path: Path) -> Path:
    """A 4 x 3 PNG at `path` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (200, 100, 50)).save(path)
    return path


def write_table(tmp_path: Path, columns: dict | pa.Table) -> str:
    """A Parquet file of `columns` (a dict of lists or arrays, or a table); its path."""
    path = tmp_path / "manifest.parquet"
    pq.write_table(columns if isinstance(columns, pa.Table) else pa.table(columns), path)
    return str(path)


def images(tmp_path: Path, *names: str) -> list[str]:
    """file:// URIs of new PNGs called `names` in tmp_path/images."""
    return [f"file://{png(tmp_path / 'images' / name)}" for name in names]


def problems(url: str, **options) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        read_manifest(url, **options)
    assert info.value.url == url
    return info.value


# --- Unreadable files and bad schemas -------------------------------------------------------------

def test_a_missing_manifest_file(tmp_path):
    url = str(tmp_path / "nope.parquet")
    error = problems(url)
    assert error.problems == ["the file does not exist"]
    assert str(error) == f"manifest {url}: 1 problem\n  the file does not exist"


def test_not_a_parquet_file(tmp_path):
    url = str(tmp_path / "manifest.parquet")
    Path(url).write_text("image_id,uri\na,a.png\n")
    [problem] = problems(url).problems
    assert problem.startswith("not a Parquet file (ArrowInvalid: ")


def test_a_folder_instead_of_a_manifest(tmp_path):
    assert problems(str(tmp_path)).problems == [
        "it is a folder; give the URL of one Parquet file"]


def test_missing_required_columns_are_all_named(tmp_path):
    url = write_table(tmp_path, {"max_size": [100]})
    assert problems(url).problems == ["missing required column 'image_id'",
                                      "missing required column 'uri'"]


def test_wrong_column_types_are_all_named(tmp_path):
    url = write_table(tmp_path, {"image_id": [1, 2], "uri": ["a.png", "b.png"],
                                 "max_size": ["100", "200"], "lr_g": ["fast", "slow"]})
    assert problems(url).problems == [
        "column 'image_id' must be a string column, got int64",
        "column 'max_size' must be an integer column, got string",
        "column 'lr_g' must be a number column, got string",
    ]


def test_a_float_in_an_integer_column_is_a_type_error(tmp_path):
    url = write_table(tmp_path, {"image_id": ["a"], "uri": ["a.png"], "niter": [100.0]})
    assert problems(url).problems == ["column 'niter' must be an integer column, got double"]


def test_unknown_columns_are_refused_with_the_allowed_ones(tmp_path):
    url = write_table(tmp_path, {"image_id": ["a"], "uri": ["a.png"], "max_szie": [100],
                                 "log_every": [5]})
    [problem] = problems(url).problems
    assert problem.startswith("unknown columns: 'max_szie', 'log_every'; allowed besides "
                              "image_id and uri: min_size, max_size, scale_factor, ")
    assert problem.endswith(", seed, task, sr_factor, frames, fps, height, width")
    allowed = problem.split("image_id and uri: ")[1].split(", ")
    assert set(allowed) == set(config().to_dict()) - {"log_every"} | {
        "seed", "task", "sr_factor", "frames", "fps", "height", "width"}


def test_an_empty_manifest(tmp_path):
    url = write_table(tmp_path, pa.table({"image_id": pa.array([], pa.string()),
                                          "uri": pa.array([], pa.string())}))
    assert problems(url).problems == ["the manifest has no rows"]


def test_large_string_columns_are_accepted(tmp_path):
    uris = images(tmp_path, "a.png")
    url = write_table(tmp_path, {"image_id": pa.array(["a"], pa.large_string()),
                                 "uri": pa.array(uris, pa.large_string())})
    assert [task.image_id for task in read_manifest(url)] == ["a"]


# --- Bad rows -------------------------------------------------------------------------------------

def test_null_ids_and_uris_list_every_row(tmp_path):
    uris = images(tmp_path, "a.png", "b.png")
    url = write_table(tmp_path, {"image_id": ["a", None, "c", None],
                                 "uri": [uris[0], uris[1], None, ""]})
    assert problems(url).problems == [
        "row 1 (image_id None): image_id is missing (null)",
        "row 2 (image_id 'c'): uri is missing (null)",
        "row 3 (image_id None): image_id is missing (null)",
        "row 3 (image_id None): uri is empty",
    ]


def test_unsafe_ids_each_get_a_precise_reason(tmp_path):
    ids = ["a/b", "..", ".", ".hidden", "/etc/x", "a\x07", "a b", "x" * 129, "", "_a", "a\\b",
           "été", "ok-1.2_x"]
    url = write_table(tmp_path, {"image_id": ids, "uri": ["a.png"] * len(ids)})
    long_id = "'" + "x" * 49 + "...'"
    assert problems(url).problems == [
        "row 0 (image_id 'a/b'): image_id contains '/'",
        "row 1 (image_id '..'): image_id is '..'",
        "row 2 (image_id '.'): image_id is '.'",
        "row 3 (image_id '.hidden'): image_id starts with '.' (a hidden name)",
        "row 4 (image_id '/etc/x'): image_id is an absolute path",
        "row 5 (image_id 'a\\x07'): image_id contains a control character (U+0007)",
        "row 6 (image_id 'a b'): image_id contains a space",
        f"row 7 (image_id {long_id}): image_id is too long (129 characters, at most 128)",
        "row 8 (image_id ''): image_id is empty",
        "row 9 (image_id '_a'): image_id starts with '_'; it must start with a letter or digit",
        "row 10 (image_id 'a\\\\b'): image_id contains '\\\\'",
        ("row 11 (image_id 'été'): image_id contains 'é' (U+00E9); allowed are ASCII letters, "
         "digits, '.', '_' and '-'"),
    ]


def test_duplicate_ids_list_all_their_rows(tmp_path):
    url = write_table(tmp_path, {"image_id": ["a", "b", "a", "c", "b", "a"], "uri": ["x.png"] * 6})
    assert problems(url).problems == [
        "image_id 'a' appears in rows 0, 2, 5",
        "image_id 'b' appears in rows 1, 4",
    ]


def test_bad_override_values_become_row_problems(tmp_path):
    url = write_table(tmp_path, {
        "image_id": ["a", "b", "c", "d", "e"], "uri": ["x.png"] * 5,
        "max_size": [None, 10, None, None, None],
        "scale_factor": [None, None, 1.5, float("nan"), None],
        "seed": [None, None, None, None, -1],
    })
    assert problems(url).problems == [
        "row 1 (image_id 'b'): invalid config: max_size (10) is below min_size (25)",
        "row 2 (image_id 'c'): invalid config: scale_factor must be in (0, 1), got 1.5",
        "row 3 (image_id 'd'): scale_factor must be a finite number, got nan",
        "row 4 (image_id 'e'): seed must be in [0, 2**32), got -1",
    ]


def test_text_and_true_false_columns_have_types(tmp_path):
    url = write_table(tmp_path, {"image_id": ["a"], "uri": ["a.png"], "padding": [1],
                                 "noise_padding": [1], "loss": [True], "patch_size": ["7"]})
    assert problems(url).problems == [
        "column 'padding' must be a string column, got int64",
        "column 'noise_padding' must be a boolean column (or strings 'true' / 'false'), got int64",
        "column 'loss' must be a string column, got bool",
        "column 'patch_size' must be an integer column, got string",
    ]


def test_bad_text_and_true_false_values_become_row_problems(tmp_path):
    url = write_table(tmp_path, {
        "image_id": ["a", "b", "c", "d"], "uri": ["x.png"] * 4,
        "padding": [None, "mirror", None, "Zero"],
        "noise_padding": [None, None, "maybe", "yes"],
        "loss": ["l1", None, None, None],
        "niter": pa.array([0, None, None, None], pa.int64()),
    })
    assert problems(url).problems == [
        ("row 0 (image_id 'a'): invalid config: niter must be a positive integer, got 0; loss "
         "must be one of wgan_gp, frechet, nnpl, annpl, got 'l1'"),
        ("row 1 (image_id 'b'): invalid config: padding must be one of zero, circular, reflect, "
         "got 'mirror'"),
        "row 2 (image_id 'c'): noise_padding must be true or false, got 'maybe'",
        "row 3 (image_id 'd'): noise_padding must be true or false, got 'yes'",
    ]


def test_images_are_not_touched_a_missing_one_fails_its_own_row_in_its_training(tmp_path):
    """Checking a million images would cost a million storage calls before the first training:
    the manifest does not look at them (pipeline.train_image fails a missing image's row)."""
    uris = images(tmp_path, "a.png")
    (tmp_path / "folder").mkdir()
    url = write_table(tmp_path, {
        "image_id": ["a", "b", "c", "d"],
        "uri": [uris[0], f"file://{tmp_path}/nope.png", f"file://{tmp_path}/folder",
                "nosuchproto://x/y.png"]})
    assert [row.uri for row in read_manifest(url)] == [
        uris[0], f"file://{tmp_path}/nope.png", f"file://{tmp_path}/folder", "nosuchproto://x/y.png"]


def test_all_kinds_of_row_problems_come_in_one_error_in_row_order(tmp_path):
    url = write_table(tmp_path, {"image_id": ["a", "a/b", "a", "b"],
                                 "uri": ["x.png", "x.png", None, ""],
                                 "niter": [None, 0, None, None]})
    error = problems(url)
    assert [problem.split(":")[0] for problem in error.problems] == [
        "image_id 'a' appears in rows 0, 2", "row 1 (image_id 'a/b')", "row 1 (image_id 'a/b')",
        "row 2 (image_id 'a')", "row 3 (image_id 'b')"]


def test_long_listings_keep_the_first_hundred_problems_and_count_them_all(tmp_path):
    ids = [f"a/{n}" for n in range(150)] + ["dup"] * 2 + [f"ok{n}" for n in range(100_000)]
    ids += [f"b/{n}" for n in range(10)]
    url = write_table(tmp_path, {"image_id": ids, "uri": ["x.png"] * len(ids)})
    error = problems(url)
    lines = str(error).splitlines()
    assert lines[0] == f"manifest {url}: 161 problems"
    assert lines[1] == "  row 0 (image_id 'a/0'): image_id contains '/'"
    assert lines[100] == "  row 99 (image_id 'a/99'): image_id contains '/'"
    assert lines[101:] == ["  ... and 61 more"]
    assert len(error.problems) == 100 and error.count == 161
    # Duplicates and bad rows found in different record batches list in row order.
    url = write_table(tmp_path, {"image_id": ["x"] + [f"ok{n}" for n in range(100_000)] + ["x"]
                                 + ["c/1"], "uri": ["x.png"] * 100_003})
    assert problems(url).problems == ["image_id 'x' appears in rows 0, 100001",
                                      "row 100002 (image_id 'c/1'): image_id contains '/'"]


def test_a_manifest_error_is_an_input_error_and_pickles():
    import pickle

    error = pickle.loads(pickle.dumps(ManifestError("s3://b/m.parquet", ["p1", "p2"], 5)))
    assert isinstance(error, InputError)
    assert (error.url, error.problems, error.count) == ("s3://b/m.parquet", ["p1", "p2"], 5)
    assert str(error) == "manifest s3://b/m.parquet: 5 problems\n  p1\n  p2\n  ... and 3 more"


def test_a_bad_job_config_or_limit_is_one_input_error(tmp_path):
    url = write_table(tmp_path, {"image_id": ["a"], "uri": ["a.png"]})
    with pytest.raises(InputError, match="unknown preset 'fast'"):
        read_manifest(url, preset="fast")
    with pytest.raises(InputError, match="unknown config fields: max_szie"):
        read_manifest(url, overrides={"max_szie": 3})
    with pytest.raises(InputError, match="limit must be a positive integer, got 0"):
        read_manifest(url, limit=0)


# --- Good manifests -------------------------------------------------------------------------------

def test_override_columns_apply_per_row_and_nulls_keep_the_job_values(tmp_path):
    uris = images(tmp_path, "a.png", "b.png", "c.png")
    url = write_table(tmp_path, {
        "image_id": ["a", "b", "c"], "uri": uris,
        "max_size": pa.array([None, 64, None], pa.int32()),
        "lr_g": [1e-3, None, None],
        "num_scales": pa.array([None, None, None], pa.null()),
    })
    tasks = read_manifest(url, preset="quick", overrides={"min_size": 20})
    quick = config("quick", min_size=20)
    assert tasks == [
        manifest_row("a", uris[0], config("quick", min_size=20, lr_g=1e-3), seed_for("a")),
        manifest_row("b", uris[1], config("quick", min_size=20, max_size=64), seed_for("b")),
        manifest_row("c", uris[2], quick, seed_for("c")),
    ]
    assert tasks[2].config.num_scales == 4  # the preset's, kept through the all-null column


def test_text_and_true_false_columns_apply_per_row(tmp_path):
    uris = images(tmp_path, "a.png", "b.png", "c.png")
    url = write_table(tmp_path, {
        "image_id": ["a", "b", "c"], "uri": uris,
        "padding": [None, "circular", "reflect"], "loss": ["nnpl", None, None],
        "patch_size": pa.array([5, None, None], pa.int64()),
        "noise_padding": pa.array([None, True, False]),
    })
    configs = [task.config for task in read_manifest(url, overrides={"padding": "reflect"})]
    assert configs == [config(padding="reflect", loss="nnpl", patch_size=5),
                       config(padding="circular", noise_padding=True),
                       config(padding="reflect", noise_padding=False)]
    # The strings "true" / "false" (any case) do for a boolean column.
    url = write_table(tmp_path, {"image_id": ["a", "b", "c"], "uri": uris,
                                 "noise_padding": ["TRUE", " false", None]})
    assert [task.config.noise_padding for task in read_manifest(url)] == [True, False, False]


def test_integer_values_in_a_float_field_become_floats(tmp_path):
    uris = images(tmp_path, "a.png")
    url = write_table(tmp_path, {"image_id": ["a"], "uri": uris, "alpha": [20]})
    [task] = read_manifest(url)
    assert task.config.alpha == 20.0 and isinstance(task.config.alpha, float)


def test_the_seed_column_wins_over_the_derived_seed(tmp_path):
    uris = images(tmp_path, "a.png", "b.png")
    url = write_table(tmp_path, {"image_id": ["a", "b"], "uri": uris, "seed": [None, 7]})
    assert [task.seed for task in read_manifest(url)] == [1598734322, 7]


def test_seed_for_is_stable_and_in_range():
    assert seed_for("a") == 1598734322  # sha256, so the same on every machine and Python
    assert seed_for("photo-1") == 419775631
    assert all(0 <= seed_for(f"img{n}") < 2**31 - 1 for n in range(1000))


def test_overriding_niter_keeps_the_learning_rate_drop_where_the_recipes_code_has_it(tmp_path):
    """SinGAN's reference drops at iteration 1600 whatever niter is; ConSinGAN's at 80 %."""
    uris = images(tmp_path, "a.png", "b.png", "c.png")
    url = write_table(tmp_path, {"image_id": ["a", "b", "c"], "uri": uris,
                                 "niter": [None, 10, 100], "lr_milestone": [None, None, 30]})
    tasks = read_manifest(url, overrides={"niter": 50})
    assert [(t.config.niter, t.config.lr_milestone) for t in tasks] == [(50, 1600), (10, 1600),
                                                                         (100, 30)]
    tasks = read_manifest(url, overrides={"niter": 50, "recipe": "consingan"})
    assert [(t.config.niter, t.config.lr_milestone) for t in tasks] == [(50, 40), (10, 8),
                                                                         (100, 30)]


def test_limit_keeps_the_first_rows_and_checks_only_those(tmp_path):
    uris = images(tmp_path, "a.png", "b.png")
    url = write_table(tmp_path, {"image_id": ["a", "b", "a/bad"],
                                 "uri": [*uris, f"file://{tmp_path}/gone.png"]})
    assert [task.image_id for task in read_manifest(url, limit=2)] == ["a", "b"]
    assert [task.image_id for task in read_manifest(url, limit=1)] == ["a"]
    assert len(problems(url).problems) == 1  # without the limit, the third row is checked


def test_limit_still_checks_the_schema_of_the_whole_file(tmp_path):
    url = write_table(tmp_path, {"image_id": ["a", "b"], "uri": ["a.png", "b.png"],
                                 "max_szie": [None, 3]})
    assert problems(url, limit=1).problems[0].startswith("unknown columns: 'max_szie'")


def test_plain_paths_resolve_against_the_current_folder(tmp_path, monkeypatch):
    png(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    url = write_table(tmp_path, {"image_id": ["a", "b"], "uri": ["a.png", "sub/b.png"]})
    assert [task.uri for task in read_manifest(url)] == [f"file://{tmp_path}/a.png",
                                                         f"file://{tmp_path}/sub/b.png"]


# --- Image ids ------------------------------------------------------------------------------------

@given(st.one_of(st.text(), st.from_regex(r"[A-Za-z0-9._-]{1,130}", fullmatch=True)))
def test_a_usable_id_is_always_exactly_one_folder_inside_the_root(image_id):
    root = "/data/output"
    if check_image_id(image_id) is None:
        joined = os.path.normpath(os.path.join(root, image_id))
        assert os.path.dirname(joined) == root
        assert os.path.basename(joined) == image_id


@given(st.text())
def test_safe_image_id_always_gives_a_usable_id(stem):
    assert check_image_id(safe_image_id(stem)) is None


def test_check_image_id_refuses_non_strings():
    assert check_image_id(None) == "is missing (null)"
    assert check_image_id(7) == "must be a string, got int"
    assert check_image_id("C:\\x") == "is an absolute path"
    assert check_image_id("photo-1.v2") is None


# --- Building a manifest from a folder ------------------------------------------------------------

def test_rows_from_a_folder_with_mixed_extensions_and_colliding_stems(tmp_path):
    for name in ["a.png", "a.jpg", "a-2.PNG", "b.JPEG", "c.webp", "d.tiff", "e.gif", "f.bmp",
                 "notes.txt", ".hidden.png", "._a.jpg", "sub/g.png"]:
        png(tmp_path / name) if not name.endswith(".txt") else (tmp_path / name).write_text("x")
    rows = manifest_rows_from(str(tmp_path))
    assert rows == [
        {"image_id": "a-2", "uri": f"file://{tmp_path}/a-2.PNG"},
        {"image_id": "a", "uri": f"file://{tmp_path}/a.jpg"},
        {"image_id": "a-3", "uri": f"file://{tmp_path}/a.png"},
        {"image_id": "b", "uri": f"file://{tmp_path}/b.JPEG"},
        {"image_id": "c", "uri": f"file://{tmp_path}/c.webp"},
        {"image_id": "d", "uri": f"file://{tmp_path}/d.tiff"},
        {"image_id": "e", "uri": f"file://{tmp_path}/e.gif"},
        {"image_id": "f", "uri": f"file://{tmp_path}/f.bmp"},
    ]


def test_rows_from_nested_folders_only_when_recursive(tmp_path):
    for name in ["top.png", "x/a.png", "x/y/a.png", ".git/z.png", "x/.cache/w.png"]:
        png(tmp_path / "photos" / name)
    root = tmp_path / "photos"
    assert [row["image_id"] for row in manifest_rows_from(str(root))] == ["top"]
    assert manifest_rows_from(str(root), recursive=True) == [
        {"image_id": "top", "uri": f"file://{root}/top.png"},
        {"image_id": "a", "uri": f"file://{root}/x/a.png"},
        {"image_id": "a-2", "uri": f"file://{root}/x/y/a.png"},
    ]


def test_rows_from_a_glob(tmp_path, monkeypatch):
    for name in ["p/a.jpg", "p/b.png", "p/q/c.jpg", "p/q/r/d.jpg"]:
        png(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert [row["image_id"] for row in manifest_rows_from("p/*.jpg")] == ["a"]
    assert [row["image_id"] for row in manifest_rows_from("p/**/*.jpg")] == ["a", "c", "d"]
    assert manifest_rows_from("p/*.jpg")[0]["uri"] == f"file://{tmp_path}/p/a.jpg"


def test_weird_file_names_become_safe_ids(tmp_path):
    names = ["my photo (1).png", "été.jpg", "___.png", "-x.png", "日本.png", "y" * 200 + ".png",
             "y" * 200 + ".jpg"]
    for name in names:
        png(tmp_path / name)
    ids = [row["image_id"] for row in manifest_rows_from(str(tmp_path))]
    # In code-point order of the names: '-x', '___', 'my photo (1)', 'yyy...', 'été', '日本'.
    assert ids == ["x", "image", "my_photo__1_", "y" * 128, "y" * 126 + "-2", "t_", "image-2"]
    assert all(check_image_id(image_id) is None for image_id in ids)


def test_safe_image_id():
    assert safe_image_id("my photo (1)") == "my_photo__1_"
    assert safe_image_id("..hidden") == "hidden"
    assert safe_image_id("...") == "image"
    assert safe_image_id("z" * 300) == "z" * 128


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist; give a folder or a glob"):
        manifest_rows_from(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="is not a folder"):
        manifest_rows_from(str(png(tmp_path / "a.png")))


def test_written_manifests_read_back(tmp_path):
    png(tmp_path / "photos" / "a b.png")
    png(tmp_path / "photos" / "c.jpg")
    rows = manifest_rows_from(str(tmp_path / "photos"))
    rows[1].update(max_size=64, seed=3, padding="circular", noise_padding=True)
    url = str(tmp_path / "out" / "manifest.parquet")
    write_manifest(rows, url)
    assert os.listdir(tmp_path / "out") == ["manifest.parquet"]  # no temporary file left
    schema = pq.read_schema(url)
    assert schema.names == ["image_id", "uri", "max_size", "padding", "noise_padding", "seed"]
    assert schema.field("padding").type == pa.string()
    assert schema.field("noise_padding").type == pa.bool_()
    assert read_manifest(url) == [
        manifest_row("a_b", f"file://{tmp_path}/photos/a b.png", config(), seed_for("a_b")),
        manifest_row("c", f"file://{tmp_path}/photos/c.jpg",
                  config(max_size=64, padding="circular", noise_padding=True), 3),
    ]


def test_write_manifest_refuses_unknown_columns(tmp_path):
    with pytest.raises(InputError, match="unknown manifest columns: max_szie; allowed: image_id"):
        write_manifest([{"image_id": "a", "uri": "a.png", "max_szie": 3}], str(tmp_path / "m"))


def test_override_columns_are_the_config_fields_but_log_every_plus_seed():
    assert "log_every" not in OVERRIDE_COLUMNS
    assert {"max_size", "scale_factor", "niter", "lr_milestone", "num_scales", "seed"} <= set(
        OVERRIDE_COLUMNS)
    assert len(OVERRIDE_COLUMNS) == len(config().to_dict())


# --- The make_manifest script ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def make_manifest():
    path = Path(__file__).resolve().parents[1] / "jobs" / "make_manifest.py"
    spec = importlib.util.spec_from_file_location("make_manifest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_the_script_writes_a_manifest_and_refuses_to_overwrite_it(tmp_path, make_manifest, capsys):
    png(tmp_path / "photos" / "a.png")
    out = str(tmp_path / "m.parquet")
    assert make_manifest([str(tmp_path / "photos"), "--out", out]) == 0
    assert capsys.readouterr().out == f"1 images -> {out}\n"
    assert [task.image_id for task in read_manifest(out)] == ["a"]

    assert make_manifest([str(tmp_path / "photos"), "--out", out]) == 2
    assert capsys.readouterr().err == (f"error: {out} already exists; pass --overwrite to "
                                       "replace it\n")
    png(tmp_path / "photos" / "b.png")
    assert make_manifest([str(tmp_path / "photos"), "--out", out, "--overwrite"]) == 0
    assert [task.image_id for task in read_manifest(out)] == ["a", "b"]


def test_the_script_fails_cleanly_without_images(tmp_path, make_manifest, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "m.parquet"
    assert make_manifest([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: no images found at {tmp_path}/empty (extensions: png, jpg, jpeg, bmp, gif, "
        "tif, tiff, webp); --recursive also looks in subfolders\n")
    assert not out.exists()


# --- S3 (moto's server on 127.0.0.1) --------------------------------------------------------------

@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    """An empty bucket on moto; s3fs, boto3 and pyarrow find it through AWS_ENDPOINT_URL."""
    import boto3
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()  # cached instances keep their old endpoint
    client = boto3.client("s3")
    client.create_bucket(Bucket="manifests")
    yield client
    s3fs.S3FileSystem.clear_instance_cache()


def test_manifests_of_images_on_s3(tmp_path, s3_bucket):
    for name in ["a.png", "b.jpg"]:
        s3_bucket.upload_file(str(png(tmp_path / name)), "manifests", f"photos/{name}")
    s3_bucket.put_object(Bucket="manifests", Key="photos/readme.txt", Body=b"x")

    rows = manifest_rows_from("s3://manifests/photos")
    assert rows == [{"image_id": "a", "uri": "s3://manifests/photos/a.png"},
                    {"image_id": "b", "uri": "s3://manifests/photos/b.jpg"}]
    assert [row["image_id"] for row in manifest_rows_from("s3://manifests/photos/*.png")] == ["a"]

    write_manifest(rows, "s3://manifests/m.parquet")
    tasks = read_manifest("s3://manifests/m.parquet")
    assert [(task.image_id, task.uri) for task in tasks] == [
        ("a", "s3://manifests/photos/a.png"), ("b", "s3://manifests/photos/b.jpg")]
    assert problems("s3://manifests/nope.parquet").problems == ["the file does not exist"]
