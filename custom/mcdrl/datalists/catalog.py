"""Where each public dataset comes from, under which terms, and which folder layout the builders expect.

The texts here are written into every datalist (``description``, ``licence``) and are the source of the
model card's dataset section. Licence lines say "see the dataset page" where the terms could not be
confirmed; always read the dataset page before use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    title: str
    url: str
    licence: str
    layout: str
    description: str


CATALOG: dict[str, DatasetInfo] = {
    "kvasir-seg": DatasetInfo(
        title="Kvasir-SEG",
        url="https://datasets.simula.no/kvasir-seg/",
        licence=(
            "Research and educational use only; other (incl. commercial) use needs prior written permission "
            "of the authors (Simula). Cite Jha et al., MMM 2020."
        ),
        layout="Kvasir-SEG/images/<id>.jpg + Kvasir-SEG/masks/<id>.jpg (same names)",
        description="1000 colonoscopy polyp images with binary masks (Vestre Viken, Norway).",
    ),
    "cvc-clinicdb": DatasetInfo(
        title="CVC-ClinicDB",
        url="https://polyp.grand-challenge.org/CVCClinicDB/",
        licence="Research use; citing Bernal et al., CMIG 2015 is required. See the dataset page for the terms.",
        layout=(
            "CVC-ClinicDB/Original/<n>.tif + CVC-ClinicDB/Ground Truth/<n>.tif (official); also "
            "PNG/Original + PNG/Ground Truth, TIF/Original + TIF/Ground Truth, images/ + masks/"
        ),
        description="612 colonoscopy frames from video sequences (Hospital Clinic, Barcelona) with polyp masks.",
    ),
    "etis-larib": DatasetInfo(
        title="ETIS-LaribPolypDB",
        url="https://polyp.grand-challenge.org/EtisLarib/",
        licence="Research use; cite Silva et al., IJCARS 2014. See the dataset page for the terms.",
        layout=(
            "ETIS-LaribPolypDB/ETIS-LaribPolypDB/<n>.tif + ETIS-LaribPolypDB/GroundTruth/p<n>.tif (official); "
            "also images/ + masks/ with equal names"
        ),
        description="196 colonoscopy frames with polyp masks (Lariboisiere hospital / ETIS lab, France).",
    ),
    "cvc-colondb": DatasetInfo(
        title="CVC-ColonDB",
        url="http://mv.cvc.uab.es/projects/colon-qa/cvccolondb",
        licence="See the dataset page (distributed by the CVC on request); cite Bernal et al., Pattern Recognit. 2012.",
        layout=(
            "CVC-ColonDB/images/<n>.png + CVC-ColonDB/masks/<n>.png (PraNet / common redistribution); or the "
            "original flat folder <n>.bmp + p<n>.bmp (s<n>/c<n> files ignored)"
        ),
        description="Colonoscopy polyp frames from 15 sequences (380 in the PraNet release).",
    ),
    "cvc-300": DatasetInfo(
        title="CVC-300 (EndoScene test set)",
        url="https://github.com/DengPingFan/PraNet (TestDataset download links in its README)",
        licence="See the dataset page (EndoScene, Vazquez et al., J. Healthc. Eng. 2017; cite it).",
        layout="CVC-300/images/<n>.png + CVC-300/masks/<n>.png",
        description="60 colonoscopy polyp frames, the EndoScene test split.",
    ),
    "polypgen": DatasetInfo(
        title="PolypGen",
        url="https://doi.org/10.7303/syn26376615 (Synapse, registration required)",
        licence=(
            "See the dataset page and the license.txt shipped with the release (a third-party inventory reports "
            "CC BY 4.0); cite Ali et al., Sci. Data 2023."
        ),
        layout=(
            "PolypGen2021_MultiCenterData_v3/data_C<k>/images_C<k>/<stem>.jpg + masks_C<k>/<stem>_mask.jpg, "
            "k = 1..6 (single frames only; sequenceData/ is not used)"
        ),
        description="Multi-centre colonoscopy polyp frames from six centres; one site per centre (PolypGen-C<k>).",
    ),
    "bm-broncholc": DatasetInfo(
        title="BM-BronchoLC",
        url="https://doi.org/10.6084/m9.figshare.24243670 (code: https://github.com/csuet/bronchoscopy_nsd)",
        licence="See the figshare record for the licence; cite the dataset paper, Sci. Data 2024 (doi:10.1038/s41597-024-03145-y).",
        layout=(
            "After steps 1-3 of the official 'Process data' scripts: {Lung_cancer,Non_lung_cancer}/imgs/**/<id>.png "
            "+ .../masks_Lung_lesions/**/<id>.png, lesion names in labels_Lung_lesions_final.json (or each group's "
            "labels_Lung_lesions.json); or the step-4 split dataset/Lung_lesions/{train,val,test}/{imgs,masks}"
        ),
        description="Bronchoscopy frames of lung-cancer and non-cancer patients with lung-lesion masks (Vietnam).",
    ),
    "laryngoscope8": DatasetInfo(
        title="Laryngoscope8",
        url="https://github.com/greenyin/Laryngoscope8",
        licence="No licence stated on the repository; see the dataset page. Cite Yin et al., Pattern Recognit. Lett. 2021.",
        layout=(
            "Laryngoscope8/<category folder>/<image> with the 8 published category names; pixel masks are NOT "
            "published: supply them as Laryngoscope8/masks/[<category folder>/]<image stem>.png"
        ),
        description="3057 laryngoscopy images with image-level labels in 8 categories (7 lesions + normal).",
    ),
    "pranet": DatasetInfo(
        title="PraNet polyp benchmark split",
        url="https://github.com/DengPingFan/PraNet (TrainDataset / TestDataset download links in its README)",
        licence="Redistribution of Kvasir-SEG, CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB and CVC-300: each one's terms apply.",
        layout=(
            "TrainDataset/{image,mask}/<name>.png (900 Kvasir-SEG hash names + 550 CVC-ClinicDB numeric names) and "
            "TestDataset/{CVC-ColonDB,ETIS-LaribPolypDB,CVC-300,Kvasir,CVC-ClinicDB}/{images,masks}/<name>.png"
        ),
        description=(
            "PraNet split: train on 900 Kvasir-SEG + 550 CVC-ClinicDB images, test on the unseen sites "
            "CVC-ColonDB, ETIS-LaribPolypDB and CVC-300."
        ),
    ),
    "loso5": DatasetInfo(
        title="MCDRL five-site leave-one-site-out benchmark",
        url="(the five datasets above: A BM-BronchoLC, B Laryngoscope8, C CVC-ClinicDB, D ETIS-LaribPolypDB, E Kvasir-SEG)",
        licence="Each site's own terms apply (see each dataset).",
        layout=(
            "<root>/{A|BM-BronchoLC, B|Laryngoscope8, C|CVC-ClinicDB, D|ETIS-LaribPolypDB, E|Kvasir-SEG}/ each in "
            "its own layout; Laryngoscope8 needs user-supplied masks"
        ),
        description="The MCDRL paper's 5-site leave-one-site-out evaluation; --holdout picks the test site.",
    ),
}
