"""Tests of mcdrl.datalists: every builder on a tiny fake tree with the real layout and file naming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist

CUSTOM = Path(__file__).resolve().parents[1] / "custom"
if str(CUSTOM) not in sys.path:  # tests also run without PYTHONPATH=custom
    sys.path.insert(0, str(CUSTOM))

from mcdrl.datalists import (
    BRONCHOLC_CLASS_MAP,
    BUILDERS,
    LARYNGOSCOPE8_CLASS_MAP,
    DatalistError,
    DatalistWarning,
    build_datalist,
    load_datalist,
    write_datalist,
)
from mcdrl.datalists.__main__ import main as cli_main
from mcdrl.datalists.polyp import pranet_source
from mcdrl.networks.prompts import LESION_CLASSES, NO_LESION

KVASIR_NAMES = ["cju0qkwl35piu0993l0dewei2", "cju0roawvklrq0799vmjorwfv", "cju0s690hkp960855tjuaqvv0"]


def put(path: Path, tag: str) -> Path:
    """A placeholder file whose content names the sample it belongs to (to check pairing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tag)
    return path


def pair_tree(img_dir: Path, mask_dir: Path, stems, ext=".png", mask_name=lambda s: s, mask_ext=None):
    for s in stems:
        put(img_dir / f"{s}{ext}", s)
        put(mask_dir / f"{mask_name(s)}{mask_ext or ext}", s)


def all_entries(dl: dict) -> list[dict]:
    return dl["training"] + dl["validation"] + dl["test"]


def assert_paired(dl: dict) -> None:
    """Every entry's image and mask were written for the same sample."""
    for e in all_entries(dl):
        assert Path(e["image"]).read_text() == Path(e["label"]).read_text(), e


def sites_of(entries) -> set[str]:
    return {e["site"] for e in entries}


# ----------------------------------------------------------------------------------------------- polyp sets
def test_kvasir_seg_pairs_and_reports_unpaired(tmp_path):
    ds = tmp_path / "Kvasir-SEG"
    pair_tree(ds / "images", ds / "masks", KVASIR_NAMES, ext=".jpg")
    put(ds / "images" / "cju0sr5ghl0nd08789uzf1raf.jpg", "lonely")
    put(ds / "kavsir_bboxes.json", "{}")
    with pytest.warns(DatalistWarning, match=r"1 of 4 images .* no mask"):
        dl = build_datalist("kvasir-seg", tmp_path, val_fraction=0.0)  # root = parent of Kvasir-SEG/
    assert [Path(e["image"]).stem for e in dl["training"]] == KVASIR_NAMES
    assert {(e["site"], e["lesion_class"]) for e in all_entries(dl)} == {("Kvasir-SEG", "polyp")}
    assert dl["validation"] == [] and dl["test"] == []
    assert_paired(dl)


@pytest.mark.parametrize("variant", [("Original", "Ground Truth"), ("PNG/Original", "PNG/Ground Truth")])
def test_cvc_clinicdb_layouts(tmp_path, variant):
    ext = ".tif" if variant[0] == "Original" else ".png"
    ds = tmp_path / "CVC-ClinicDB"
    pair_tree(ds / variant[0], ds / variant[1], ["1", "2", "10", "11"], ext=ext)
    dl = build_datalist("cvc-clinicdb", ds, val_fraction=0.25, seed=1)
    assert len(dl["training"]) == 3 and len(dl["validation"]) == 1
    assert sites_of(all_entries(dl)) == {"CVC-ClinicDB"}
    assert_paired(dl)


def test_etis_official_layout_strips_p_prefix(tmp_path):
    ds = tmp_path / "ETIS-LaribPolypDB"
    pair_tree(ds / "ETIS-LaribPolypDB", ds / "GroundTruth", ["1", "10", "100", "2"], ext=".tif", mask_name=lambda s: f"p{s}")
    dl = build_datalist("etis-larib", tmp_path, val_fraction=0.0)
    assert sorted(Path(e["label"]).name for e in dl["training"]) == ["p1.tif", "p10.tif", "p100.tif", "p2.tif"]
    assert_paired(dl)
    assert sites_of(dl["training"]) == {"ETIS-LaribPolypDB"}


@pytest.mark.parametrize(
    "name,folder,site", [("etis-larib", "ETIS-LaribPolypDB", "ETIS-LaribPolypDB"), ("cvc-300", "CVC-300", "CVC-300"),
                         ("cvc-colondb", "CVC-ColonDB", "CVC-ColonDB")]
)
def test_images_masks_layouts(tmp_path, name, folder, site):
    ds = tmp_path / folder
    pair_tree(ds / "images", ds / "masks", ["1", "2", "3"])
    with pytest.warns(DatalistWarning, match="no training entries"):
        dl = build_datalist(name, ds, val_fraction=0.0, holdout=[site])  # whole dataset as an unseen test set
    assert dl["training"] == [] and len(dl["test"]) == 3
    assert sites_of(dl["test"]) == {site}
    assert_paired(dl)


def test_cvc_colondb_original_flat_layout(tmp_path):
    ds = tmp_path / "CVC-ColonDB"
    for n in ("1", "2", "3"):
        put(ds / f"{n}.bmp", n)
        put(ds / f"p{n}.bmp", n)
        put(ds / f"s{n}.bmp", "non-informative region")
        put(ds / f"c{n}.bmp", "contour")
    dl = build_datalist("cvc-colondb", tmp_path, val_fraction=0.0)
    assert [(Path(e["image"]).name, Path(e["label"]).name) for e in dl["training"]] == [
        ("1.bmp", "p1.bmp"), ("2.bmp", "p2.bmp"), ("3.bmp", "p3.bmp")
    ]


def test_polypgen_centres_and_mask_suffix(tmp_path):
    base = tmp_path / "PolypGen2021_MultiCenterData_v3"
    pair_tree(base / "data_C1/images_C1", base / "data_C1/masks_C1", ["100H0050", "100S0001"], ext=".jpg",
              mask_name=lambda s: f"{s}_mask")
    put(base / "data_C3/images_C3/C3_EndoCV2021_00489_.jpg", "typo")  # real release typo: trailing "_"
    put(base / "data_C3/masks_C3/C3_EndoCV2021_00489_mask.jpg", "typo")
    put(base / "data_C3/images_C3/C3_EndoCV2021_00490.jpg", "ok")
    put(base / "data_C3/masks_C3/C3_EndoCV2021_00490_mask.jpg", "ok")
    put(base / "data_C1/bbox_C1/100H0050_mask.txt", "polyp 1 2 3 4")
    dl = build_datalist("polypgen", tmp_path, val_fraction=0.0)
    assert sites_of(dl["training"]) == {"PolypGen-C1", "PolypGen-C3"}
    assert len(dl["training"]) == 4
    assert_paired(dl)


def test_pairing_errors(tmp_path):
    ds = tmp_path / "Kvasir-SEG"
    pair_tree(ds / "images", ds / "masks", ["a" * 20], ext=".jpg", mask_name=lambda s: "b" * 20)
    with pytest.raises(DatalistError, match="none of the 1 images"):
        build_datalist("kvasir-seg", ds)
    put(ds / "masks" / ("a" * 20 + ".png"), "x")
    put(ds / "masks" / ("a" * 20 + "_mask.jpg"), "y")
    with pytest.raises(DatalistError, match="same matching key"):
        build_datalist("kvasir-seg", ds)


def test_missing_mask_folder_names_site_and_folder(tmp_path):
    ds = tmp_path / "CVC-ClinicDB"
    put(ds / "Original" / "1.tif", "1")
    with pytest.raises(DatalistError, match=r"CVC-ClinicDB.*looked in .*Ground Truth"):
        build_datalist("cvc-clinicdb", ds)


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(DatalistError) as err:
        build_datalist("kvasir-v9", tmp_path)
    assert all(name in str(err.value) for name in BUILDERS)


# ----------------------------------------------------------------------------------------------- PraNet
def make_pranet(root: Path) -> None:
    pair_tree(root / "TrainDataset/image", root / "TrainDataset/mask", ["1", "2", "3", *KVASIR_NAMES])
    for folder, stems in {
        "CVC-ColonDB": ["1", "2"], "ETIS-LaribPolypDB": ["1", "2"], "CVC-300": ["149", "150"],
        "Kvasir": ["cju0sxqiclckk08551ycbwhno"], "CVC-ClinicDB": ["4"],
    }.items():
        pair_tree(root / "TestDataset" / folder / "images", root / "TestDataset" / folder / "masks",
                  [f"{folder}/{s}".replace("/", "_") for s in stems])


def test_pranet_split(tmp_path):
    make_pranet(tmp_path)
    dl = build_datalist("pranet", tmp_path, val_fraction=0.34, seed=0)
    train_sites = {Path(e["image"]).stem: e["site"] for e in dl["training"] + dl["validation"]}
    assert train_sites == {"1": "CVC-ClinicDB", "2": "CVC-ClinicDB", "3": "CVC-ClinicDB",
                           **{k: "Kvasir-SEG" for k in KVASIR_NAMES}}
    assert sites_of(dl["validation"]) == {"CVC-ClinicDB", "Kvasir-SEG"}  # drawn per training site
    assert sites_of(dl["test"]) == {"CVC-ColonDB", "ETIS-LaribPolypDB", "CVC-300"}
    assert len(dl["test"]) == 6
    assert_paired(dl)
    seen = build_datalist("pranet", tmp_path, include_seen_test=True)
    assert sites_of(seen["test"]) == {"CVC-ColonDB", "ETIS-LaribPolypDB", "CVC-300", "Kvasir-SEG", "CVC-ClinicDB"}


def test_pranet_source_naming():
    assert pranet_source("12.png") == "CVC-ClinicDB"
    assert pranet_source("cju0qkwl35piu0993l0dewei2.png") == "Kvasir-SEG"
    with pytest.raises(DatalistError, match="cannot tell its source"):
        pranet_source("image_001.png")


# ----------------------------------------------------------------------------------------------- airway sets
BRONCHO_IDS = {
    "Lung_cancer/imgs/p01/v1/0a7c0e1e-aaaa-4bbb-8ccc-000000000001.png": ["Tumor", "Muscosal erythema"],
    "Lung_cancer/imgs/p01/v1/0a7c0e1e-aaaa-4bbb-8ccc-000000000002.png": ["Stenosis"],
    "Lung_cancer/imgs/p02/v1/0a7c0e1e-aaaa-4bbb-8ccc-000000000003.png": ["Anthrocosis"],
    "Non_lung_cancer/imgs/p03/v1/0a7c0e1e-aaaa-4bbb-8ccc-000000000004.png": ["Mucosal edema of carina"],
}


def make_broncholc(root: Path) -> None:
    labels = []
    for rel, names in BRONCHO_IDS.items():
        img = put(root / rel, rel)
        put(root / rel.replace("/imgs/", "/masks_Lung_lesions/"), rel)
        labels += [{"object_id": img.stem, "label_id": "x", "label_name": n} for n in names]
    put(root / "Lung_cancer/imgs/p02/v1/0a7c0e1e-aaaa-4bbb-8ccc-00000000000f.png", "landmarks only")
    (root / "labels_Lung_lesions_final.json").write_text(json.dumps(labels))


def test_broncholc_layout_labels_and_mapping(tmp_path):
    make_broncholc(tmp_path)
    with pytest.warns(DatalistWarning, match="1 of 4 images .* no mask"):
        dl = build_datalist("bm-broncholc", tmp_path, val_fraction=0.0)
    got = {Path(e["image"]).stem[-2:]: e["lesion_class"] for e in dl["training"]}
    assert got == {"01": "tumor", "02": "tumor", "03": "nodule", "04": "inflammation"}
    assert sites_of(dl["training"]) == {"BM-BronchoLC"}
    assert_paired(dl)
    assert set(BRONCHOLC_CLASS_MAP.values()) <= set(LESION_CLASSES)
    assert set(LARYNGOSCOPE8_CLASS_MAP.values()) <= set(LESION_CLASSES) | {NO_LESION}


def test_broncholc_validation_keeps_videos_together(tmp_path):
    make_broncholc(tmp_path)
    with pytest.warns(DatalistWarning):
        dl = build_datalist("bm-broncholc", tmp_path, val_fraction=0.34, seed=3)
    val_dirs = {Path(e["image"]).parent for e in dl["validation"]}
    assert val_dirs and not val_dirs & {Path(e["image"]).parent for e in dl["training"]}


def make_laryngoscope8(root: Path, with_masks: bool = True) -> None:
    for folder, stem in [("Vocal Cord Polyps", "0001"), ("Vocal Cord Cyst", "0002"), ("Glottic Cancer", "0003"),
                         ("Normal", "0004"), ("Reinke's Edema", "0005")]:
        put(root / folder / f"{stem}.jpg", stem)
        if with_masks:
            put(root / "masks" / folder / f"{stem}.png", stem)


def test_laryngoscope8_with_user_masks(tmp_path):
    make_laryngoscope8(tmp_path / "Laryngoscope8")
    dl = build_datalist("laryngoscope8", tmp_path, val_fraction=0.0)
    got = {Path(e["image"]).stem: e["lesion_class"] for e in dl["training"]}
    assert got == {"0001": "polyp", "0002": "cyst", "0003": "tumor", "0004": NO_LESION, "0005": "inflammation"}
    assert_paired(dl)


def test_laryngoscope8_without_masks_raises(tmp_path):
    make_laryngoscope8(tmp_path, with_masks=False)
    with pytest.raises(DatalistError, match=r"'Laryngoscope8'.*looked in .*masks"):
        build_datalist("laryngoscope8", tmp_path)


# ----------------------------------------------------------------------------------------------- loso5
def make_loso5(root: Path, b_masks: bool = True) -> None:
    make_broncholc(root / "A")
    make_laryngoscope8(root / "B_Laryngoscope8", with_masks=b_masks)
    pair_tree(root / "C/CVC-ClinicDB/Original", root / "C/CVC-ClinicDB/Ground Truth", ["1", "2", "3"], ext=".tif")
    pair_tree(root / "D/ETIS-LaribPolypDB/ETIS-LaribPolypDB", root / "D/ETIS-LaribPolypDB/GroundTruth",
              ["1", "2"], ext=".tif", mask_name=lambda s: f"p{s}")
    pair_tree(root / "E/Kvasir-SEG/images", root / "E/Kvasir-SEG/masks", KVASIR_NAMES, ext=".jpg")


@pytest.mark.filterwarnings("ignore::mcdrl.datalists.DatalistWarning")
def test_loso5_holdout(tmp_path):
    make_loso5(tmp_path)
    dl = build_datalist("loso5", tmp_path, holdout=["C"], val_fraction=0.34, seed=0)
    assert sites_of(dl["test"]) == {"CVC-ClinicDB"} and len(dl["test"]) == 3
    assert sites_of(dl["training"]) == {"BM-BronchoLC", "Laryngoscope8", "ETIS-LaribPolypDB", "Kvasir-SEG"}
    assert "CVC-ClinicDB" not in sites_of(dl["validation"])
    assert dl["sites"] == ["BM-BronchoLC", "CVC-ClinicDB", "ETIS-LaribPolypDB", "Kvasir-SEG", "Laryngoscope8"]
    assert_paired(dl)
    by_name = build_datalist("loso5", tmp_path, holdout=["kvasir-seg"])
    assert sites_of(by_name["test"]) == {"Kvasir-SEG"}


@pytest.mark.filterwarnings("ignore::mcdrl.datalists.DatalistWarning")
def test_loso5_site_without_masks(tmp_path):
    make_loso5(tmp_path, b_masks=False)
    with pytest.raises(DatalistError, match=r"'Laryngoscope8'.*looked in .*B_Laryngoscope8.*masks"):
        build_datalist("loso5", tmp_path, holdout=["A"])
    dl = build_datalist("loso5", tmp_path, holdout=["A"], sites=["A", "C", "D", "E"])
    assert "Laryngoscope8" not in dl["sites"]


# ----------------------------------------------------------------------------------------------- splits, writing
def test_validation_split_is_seeded_and_from_training_sites(tmp_path):
    ds = tmp_path / "CVC-ClinicDB"
    pair_tree(ds / "Original", ds / "Ground Truth", [str(i) for i in range(1, 41)], ext=".tif")
    a = build_datalist("cvc-clinicdb", ds, val_fraction=0.25, seed=7)
    b = build_datalist("cvc-clinicdb", ds, val_fraction=0.25, seed=7)
    c = build_datalist("cvc-clinicdb", ds, val_fraction=0.25, seed=8)
    assert a == b and len(a["validation"]) == 10 and len(a["training"]) == 30
    assert a["validation"] != c["validation"]
    assert a["training"] == sorted(a["training"], key=lambda e: (e["site"], str(e["image"])))


@pytest.mark.filterwarnings("ignore::mcdrl.datalists.DatalistWarning")
def test_written_datalist_resolves_with_monai(tmp_path):
    root = tmp_path / "loso"
    make_loso5(root)
    dl = build_datalist("loso5", root, holdout=["D"], val_fraction=0.34)
    out = write_datalist(dl, root / "datalist_loso5.json", root=root)
    doc = json.loads(out.read_text())
    assert doc["paths"].startswith("relative") and not os.path.isabs(doc["training"][0]["image"])
    assert set(doc["training"][0]) == {"image", "label", "site", "lesion_class"}
    assert doc["numTest"] == 2 and doc["licence"]
    for key in ("training", "validation", "test"):
        items = load_decathlon_datalist(out, data_list_key=key, base_dir=os.path.dirname(out))
        assert items and all(os.path.isfile(i["image"]) and os.path.isfile(i["label"]) for i in items)
        assert [i["image"] for i in items] == [i["image"] for i in load_datalist(out, key)]
    outside = write_datalist(dl, tmp_path / "elsewhere" / "dl.json", root=root)  # outside root: absolute
    doc = json.loads(outside.read_text())
    assert doc["paths"] == "absolute" and os.path.isabs(doc["test"][0]["image"])
    items = load_decathlon_datalist(outside, data_list_key="test", base_dir=os.path.dirname(outside))
    assert all(os.path.isfile(i["label"]) for i in items)
    assert sorted(os.listdir(root)) == ["A", "B_Laryngoscope8", "C", "D", "E", "datalist_loso5.json"]  # no temp


def test_site_named_like_a_folder_is_flagged(tmp_path):
    ds = tmp_path / "Kvasir-SEG"
    pair_tree(ds / "images", ds / "masks", KVASIR_NAMES, ext=".jpg")
    dl = build_datalist("kvasir-seg", tmp_path)
    with pytest.warns(DatalistWarning, match="load_decathlon_datalist would turn"):
        out = write_datalist(dl, tmp_path / "datalist.json", root=tmp_path)
    assert {e["site"] for e in load_datalist(out, "training")} == {"Kvasir-SEG"}


def test_cli_in_process_errors(tmp_path, capsys):
    assert cli_main(["no-such-set", str(tmp_path)]) == 1
    assert "known: kvasir-seg" in capsys.readouterr().err
    make_laryngoscope8(tmp_path, with_masks=False)
    assert cli_main(["laryngoscope8", str(tmp_path)]) == 1
    assert "Laryngoscope8" in capsys.readouterr().err


def test_cli_subprocess(tmp_path):
    make_pranet(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CUSTOM), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run(
        [sys.executable, "-m", "mcdrl.datalists", "pranet", str(tmp_path), "--val-fraction", "0.2", "--seed", "1"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = tmp_path / "datalist_pranet.json"
    assert f"wrote {out}" in res.stdout
    doc = json.loads(out.read_text())
    assert doc["name"] == "pranet" and doc["seed"] == 1 and doc["numTest"] == 6
    items = load_decathlon_datalist(out, data_list_key="training", base_dir=os.path.dirname(out))
    assert all(os.path.isfile(i["image"]) for i in items)


def _real_masks(mask_dir: Path, stems, ext: str, size=(96, 128), **save) -> None:
    """Real image files for ``stems``: a 0/255 disc lesion mask each (PIL picks the format from ``ext``)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[: size[0], : size[1]]
    for i, s in enumerate(stems):
        mask = (((yy - 48) ** 2 + (xx - 40 - 10 * i) ** 2) <= 30**2) * 255
        (mask_dir / f"{s}{ext}").parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype("uint8")).save(mask_dir / f"{s}{ext}", **save)


def test_builders_report_mask_format_and_jpeg_artifacts(tmp_path, capsys, caplog):
    """Kvasir-SEG publishes JPEG masks (a compression halo of grey values around every edge), CVC-ClinicDB binary
    TIFFs: the datalist and the CLI say so per site, with the threshold the bundle applies; a mask that cannot be
    opened is named and the others are still checked."""
    kv = tmp_path / "kv" / "Kvasir-SEG"
    pair_tree(kv / "images", kv / "masks", KVASIR_NAMES, ext=".jpg")
    _real_masks(kv / "masks", KVASIR_NAMES, ".jpg", quality=75)
    with pytest.warns(DatalistWarning, match=r"Kvasir-SEG.*3 of 3 checked JPEG masks are not binary.*Otsu"):
        dl = build_datalist("kvasir-seg", tmp_path / "kv", val_fraction=0.0)
    assert dl["masks"] == {"Kvasir-SEG": {"format": ["JPEG"], "value_range": "0-255", "masks": 3, "checked": 3, "not_binary": 3,
                                          "jpeg_artifacts": True, "threshold": "otsu"}}
    out = write_datalist(dl, tmp_path / "out" / "dl.json", root=tmp_path / "kv")
    assert json.loads(out.read_text())["masks"] == dl["masks"]

    cvc = tmp_path / "CVC-ClinicDB"
    stems = [str(i) for i in range(1, 5)]
    pair_tree(cvc / "Original", cvc / "Ground Truth", stems, ext=".tif")
    _real_masks(cvc / "Ground Truth", stems[:3], ".tif")  # mask 4 stays a placeholder text file: unreadable
    assert cli_main(["cvc-clinicdb", str(cvc), "--val-fraction", "0"]) == 0
    assert "site 'CVC-ClinicDB': 1 mask(s) cannot be opened: 4.tif (not an image file)" in caplog.text
    report = json.loads((cvc / "datalist_cvc-clinicdb.json").read_text())["masks"]["CVC-ClinicDB"]
    assert report == {"format": ["TIFF"], "value_range": "0-255", "masks": 4, "checked": 3, "not_binary": 0, "jpeg_artifacts": False,
                      "threshold": "half_range", "unreadable": 1}
    assert "CVC-ClinicDB: TIFF 0-255, 3 of 4 checked, all binary -> threshold half_range" in capsys.readouterr().out
