"""ModalTune text prompts: the release's exact strings on hand-written records, and a cohort's prompts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.data import format as fmt
from models.paper.sites import ALL_SITES, site_info
from bench.errors import BenchError
from bench.text_cache import case_prompts, cohort_prompts
from models.text.prompts import TEXT_TASKS, PromptError, build_prompts, survival_bin_phrases

BRCA = {"classes": {"0": "infiltrating duct carcinoma", "1": "lobular carcinoma"},
        "bin_upper_months": [15, 27, 55, 283]}
GBMLGG = {"classes": {"0": "glioblastoma", "1": "mixed glioma"}, "bin_upper_months": [8, 17, 31, 211]}
NSCLC = {"classes": {"0": "lung adenocarcinoma", "1": "lung squamous cell carcinoma"},
         "bin_upper_months": [12, 22, 39, 238]}


def brca_record(**overrides):
    """The first record of the release's BRCA train split, as a patients.csv row."""
    row = {"case_id": "TCGA-BH-A0AY", "site": "BRCA", "label": 0, "primary_diagnosis": "infiltrating duct carcinoma",
           "stage": "Stage IIA", "t": "T2", "n": "N0 (i-)", "m": "M0", "survival_months": 25.53, "event": 0,
           "survival_bin": 1}
    row.update(overrides)
    return row


def test_complete_record_gives_the_release_strings():
    prompts = build_prompts(brca_record(), BRCA)
    staging = ("Overall stage: stage two; Tumor stage status: tumor stage two; "
               "Lymph node status: cancer has not spread to lymph nodes; "
               "Distant metastasis status: no metastasis detected;")
    survival = "Survival status: The patient was censored between 15 and 27 months"
    assert list(prompts) == list(TEXT_TASKS)
    assert prompts == {
        "general": f"Cancer location: breast; Cancer diagnosis: infiltrating duct carcinoma; {staging} {survival}",
        "diagnosis": "Cancer location: breast; Cancer diagnosis: infiltrating duct carcinoma;",
        "stage": f"Cancer location: breast; {staging}",
        "survival": f"Cancer location: breast; {staging} {survival}",
    }


@pytest.mark.parametrize("missing", ["", "   ", None, float("nan"), np.nan, pd.NA])
def test_missing_staging_drops_sentences_but_keeps_the_release_spacing(missing):
    row = {"site": "GBMLGG", "primary_diagnosis": "glioblastoma", "stage": missing, "t": missing, "n": missing,
           "m": missing, "survival_months": 3.2, "event": 1, "survival_bin": 0}
    prompts = build_prompts(row, GBMLGG)
    assert prompts == {
        "general": ("Cancer location: brain; Cancer diagnosis: glioblastoma;     "
                    "Survival status: The patient died before 8 months"),
        "diagnosis": "Cancer location: brain; Cancer diagnosis: glioblastoma;",
        "stage": "Cancer location: brain;    ",
        "survival": "Cancer location: brain;     Survival status: The patient died before 8 months",
    }


def test_partly_missing_record_drops_only_those_sentences():
    row = {"site": "NSCLC", "primary_diagnosis": "lung squamous cell carcinoma", "stage": "", "t": "T2b", "n": "",
           "m": "M1a", "survival_months": 40.0, "event": 0, "survival_bin": 3}
    prompts = build_prompts(row, NSCLC)
    assert prompts["general"] == ("Cancer location: lung; Cancer diagnosis: lung squamous cell carcinoma;  "
                                  "Tumor stage status: tumor stage two;  Distant metastasis status: cancer has spread "
                                  "to distant organs; Survival status: The patient was censored "
                                  "between 39 and 238 months")
    assert prompts["stage"] == ("Cancer location: lung;  Tumor stage status: tumor stage two;  "
                                "Distant metastasis status: cancer has spread to distant organs;")


def test_missing_diagnosis_and_missing_follow_up():
    prompts = build_prompts(brca_record(primary_diagnosis="", survival_months=float("nan")), BRCA)
    assert prompts["diagnosis"] == "Cancer location: breast; "
    assert "Survival status" not in prompts["general"] and "Survival status" not in prompts["survival"]
    assert prompts["general"].startswith("Cancer location: breast;  Overall stage: stage two;")
    assert prompts["survival"].endswith("no metastasis detected; ")


def test_rare_set_diagnosis_is_written_as_recorded():
    rare = brca_record(label=-1, primary_diagnosis="metaplastic carcinoma", stage="Stage IIIC", t="T4b", n="N3a",
                       m="MX", survival_months=10.0, event=1, survival_bin=0)
    prompts = build_prompts(rare, BRCA)
    assert prompts["diagnosis"] == "Cancer location: breast; Cancer diagnosis: metaplastic carcinoma;"
    assert prompts["survival"] == ("Cancer location: breast; Overall stage: stage three; "
                                   "Tumor stage status: tumor stage four; Lymph node status: node stage three; "
                                   "Distant metastasis status: metastasis status cannot be assessed; "
                                   "Survival status: The patient died before 15 months")


def test_censored_and_died_differ_only_in_the_event_phrase():
    censored = build_prompts(brca_record(event=0), BRCA)
    died = build_prompts(brca_record(event=1), BRCA)
    assert censored["diagnosis"] == died["diagnosis"] and censored["stage"] == died["stage"]
    assert censored["survival"].endswith("The patient was censored between 15 and 27 months")
    assert died["survival"].endswith("The patient died between 15 and 27 months")
    assert censored["general"].replace("was censored", "died") == died["general"]


def test_paper_example_patient_censored_at_144_months():
    """Supplement Sec. 9: a BRCA patient censored at 144 months is "censored between 55 and 283 months"."""
    edges = site_info("BRCA").bin_upper_months
    bin_ = int(fmt.survival_bin([144.0], edges)[0])
    prompts = build_prompts(brca_record(survival_months=144.0, event=0, survival_bin=bin_), {"bin_upper_months": edges})
    assert prompts["survival"].endswith("Survival status: The patient was censored between 55 and 283 months")


@pytest.mark.parametrize("site", ALL_SITES)
def test_bin_phrases_match_table_5(site):
    e = [int(x) for x in site_info(site).bin_upper_months]
    assert survival_bin_phrases(site_info(site).bin_upper_months) == (
        f"before {e[0]} months", f"between {e[0]} and {e[1]} months",
        f"between {e[1]} and {e[2]} months", f"between {e[2]} and {e[3]} months")


def test_bin_edges_round_half_to_even_like_the_release():
    # quartiles of real data are fractional; the release rounds with np.round, the top edge being max + 1e-6
    assert survival_bin_phrases([14.6, 26.5, 55.5, 282.5]) == (
        "before 15 months", "between 15 and 26 months", "between 26 and 56 months", "between 56 and 283 months")
    with pytest.raises(PromptError, match="4 finite"):
        survival_bin_phrases([1.0, 2.0, math.inf, 4.0])


@pytest.mark.parametrize(("field", "raw", "phrase"), [
    ("stage", "Stage IIIA", "Overall stage: stage three;"),
    ("stage", "Stage IVB", "Overall stage: stage four;"),
    ("stage", "Stage IA", "Overall stage: stage one;"),
    ("stage", "Stage X", "Overall stage: stage cannot be determined;"),
    ("t", "T1b", "Tumor stage status: tumor stage one;"),
    ("t", "T1c", "Tumor stage status: tumor stage one;"),
    ("t", "T4d", "Tumor stage status: tumor stage four;"),
    ("t", "Tis", "Tumor stage status: no tumor detected;"),
    ("t", "TX", "Tumor stage status: tumor stage cannot be assessed;"),
    ("n", "N0 (i+)", "Lymph node status: cancer has not spread to lymph nodes;"),
    ("n", "N0 (mol+)", "Lymph node status: cancer has not spread to lymph nodes;"),
    ("n", "N1mi", "Lymph node status: node stage one;"),
    ("n", "N3c", "Lymph node status: node stage three;"),
    ("n", "NX", "Lymph node status: node spread cannot be assessed;"),
    ("m", "cM0 (i+)", "Distant metastasis status: no metastasis detected;"),
    ("m", "M1b", "Distant metastasis status: cancer has spread to distant organs;"),
    ("m", "MX", "Distant metastasis status: metastasis status cannot be assessed;"),
])
def test_ajcc_values_fold_into_the_paper_phrases(field, raw, phrase):
    stage_text = build_prompts(brca_record(**{field: raw}), BRCA)["stage"]
    assert phrase in stage_text.split("Cancer location: breast; ")[1]


@pytest.mark.parametrize(("field", "raw"), [("stage", "Stage 0"), ("t", "T2a1"), ("n", "pN1"), ("m", "M2")])
def test_values_outside_the_templates_are_errors_naming_field_and_value(field, raw):
    with pytest.raises(PromptError, match=rf"{field} value '{raw}'"):
        build_prompts(brca_record(**{field: raw}), BRCA)


def test_bad_event_bin_or_site_are_errors():
    with pytest.raises(PromptError, match="event"):
        build_prompts(brca_record(event=2), BRCA)
    with pytest.raises(PromptError, match="survival_bin"):
        build_prompts(brca_record(survival_bin=4), BRCA)
    with pytest.raises(PromptError, match="site 'LIHC'"):
        build_prompts(brca_record(site="LIHC"), BRCA)


def test_cohort_prompts_cover_every_patient(rcc_cohort):
    prompts = cohort_prompts(rcc_cohort)
    patients = pd.read_csv(rcc_cohort / fmt.PATIENTS, dtype=str, keep_default_na=False)
    assert list(prompts) == patients["case_id"].tolist()
    bins = survival_bin_phrases(site_info("RCC").bin_upper_months)
    for (_, row), texts in zip(patients.iterrows(), prompts.values()):
        event = "died" if row["event"] == "1" else "was censored"
        assert texts["diagnosis"] == f"Cancer location: kidney; Cancer diagnosis: {row['primary_diagnosis']};"
        assert texts["general"].endswith(f"Survival status: The patient {event} {bins[int(row['survival_bin'])]}")
        assert ("Overall stage:" in texts["stage"]) == bool(row["stage"])
        assert ("Lymph node status:" in texts["survival"]) == bool(row["n"])


def test_case_prompts_by_barcode_and_unknown_case(rcc_cohort):
    first = pd.read_csv(rcc_cohort / fmt.PATIENTS, dtype=str).iloc[0]
    assert case_prompts(rcc_cohort, first["case_id"]) == cohort_prompts(rcc_cohort)[first["case_id"]]
    with pytest.raises(BenchError, match="TCGA-XX-9999.*TCGA patient barcodes"):
        case_prompts(rcc_cohort, "TCGA-XX-9999")


def test_cohort_value_outside_templates_names_patient(rcc_copy):
    path = rcc_copy / fmt.PATIENTS
    patients = pd.read_csv(path, dtype=str, keep_default_na=False)
    patients.loc[2, "t"] = "T9"
    patients.to_csv(path, index=False)
    with pytest.raises(BenchError, match=rf"patient {patients.loc[2, 'case_id']}: t value 'T9'"):
        cohort_prompts(rcc_copy)
