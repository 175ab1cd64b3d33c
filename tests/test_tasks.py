"""lm-eval loads kvbench's task configs from the installed package and builds a synthetic task's documents."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import build_tokenizer  # noqa: E402

CATEGORIES = {
    "recall": ["json_kv", "ruler_mk_needle", "ruler_mk_uuid", "ruler_mv"],
    "rag": ["kilt_nq", "kilt_triviaqa", "kilt_popqa", "kilt_hotpotqa"],
    "rerank": ["msmarco_rerank"],
    "icl": ["icl_trec_coarse", "icl_trec_fine", "icl_nlu", "icl_banking77", "icl_clinc150"],
}
TASKS = [f"kvbench_{t}" for tasks in CATEGORIES.values() for t in tasks]
SYNTH = [f"kvbench_synth_{c}" for c in CATEGORIES]
GROUPS = [f"kvbench_{c}" for c in CATEGORIES] + ["kvbench", "kvbench_synth"]


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    # The installed package, not the source tree (which `python -m pytest` puts first on sys.path): run
    # Python from elsewhere, as a user would, and ask importlib.resources where kvbench's tasks are.
    code = "import importlib.resources as r; print(r.files('kvbench') / 'tasks')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path_factory.mktemp("elsewhere"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    folder = Path(out)
    assert "site-packages" in str(folder), folder
    assert (folder / "recall" / "_template_yaml").is_file(), "kvbench.tasks lacks its YAMLs: reinstall kvbench"
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_installed_package_holds_every_task_config(tasks_dir):
    for category, tasks in CATEGORIES.items():
        for task in tasks + [f"synth_{category}"]:
            assert (tasks_dir / category / f"{task}.yaml").is_file()
        assert (tasks_dir / category / "utils.py").is_file()


def test_lm_eval_finds_every_task_and_group(tasks_dir, tokenizer_dir):
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    names = set(manager.all_tasks)
    assert set(TASKS + SYNTH + GROUPS) <= names

    manager = TaskManager(
        include_path=str(tasks_dir),
        include_defaults=False,
        metadata={"pretrained": str(tokenizer_dir), "context_length": 2048, "num_samples": 2},
    )
    ((group, subtasks),) = get_task_dict(["kvbench_synth"], manager).items()
    assert group.group_name == "kvbench_synth"
    assert sorted(subtasks) == sorted(SYNTH)
    for name, task in subtasks.items():
        docs = list(task.test_docs())
        assert len(docs) == 2
        category = name.removeprefix("kvbench_synth_")
        assert task.config.metadata["category"] == category  # the scorer reads it from here
        assert task.doc_to_text(docs[0]) == docs[0]["prompt"]
        gold = task.doc_to_target(docs[0])
        metrics = task.process_results(docs[0], [" " + gold])
        assert metrics["score"] == pytest.approx(1.0)
        assert set(task.aggregation()) >= {"score", "kv_footprint", "kv_peak"}


def test_every_task_declares_its_category(tasks_dir):
    import yaml

    for category, tasks in CATEGORIES.items():
        template = yaml.safe_load((tasks_dir / category / "_template_yaml").read_text().replace("!function", ""))
        assert template["metadata"]["category"] == category
        for task in tasks + [f"synth_{category}"]:
            text = (tasks_dir / category / f"{task}.yaml").read_text()
            assert "include: _template_yaml" in text and "metadata" not in text  # so the template's stays


def test_hf_backend_runs_the_synthetic_group_without_footprint_keys(tasks_dir, tmp_path):
    # With a backend that returns plain strings, the declared kv_* metrics are simply absent, not an error.
    import lm_eval
    from checkpoints import save_tiny_checkpoint
    from lm_eval.tasks import TaskManager

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny")
    manager = TaskManager(
        include_path=str(tasks_dir),
        include_defaults=False,
        metadata={"pretrained": str(checkpoint), "context_length": 1024, "num_samples": 1},
    )
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={checkpoint},max_length=1024",
        tasks=["kvbench_synth"],
        task_manager=manager,
        limit=1,
        device="cpu",
        batch_size=1,
    )["results"]
    assert 0.0 <= results["kvbench_synth"]["score,none"] <= 1.0
    for name in SYNTH:
        assert "score,none" in results[name] and "kv_footprint,none" not in results[name]


def test_the_kvbench_group_is_the_mean_of_its_four_categories(tasks_dir, tokenizer_dir, tmp_path):
    """HELMET reports the mean of the categories; lm-eval 0.4.13 alone would average the 14 leaf tasks (re-rank,
    one task, would weigh 1/14). A model that ranks perfectly and answers nothing else: categories 0, 0, 1, 0."""
    import lm_eval
    from helmet_files import write_helmet_data
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    from kvbench.lmeval.hook import install

    install()

    class RanksOnly(LM):
        def generate_until(self, requests, disable_tqdm=False):
            return [
                " " + r.doc["answers"][0] if r.task_name == "kvbench_msmarco_rerank" else " no idea" for r in requests
            ]

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    data = write_helmet_data(tmp_path / "helmet", lengths=(4096,), rows=1)
    manager = TaskManager(
        include_path=str(tasks_dir),
        include_defaults=False,
        metadata={"pretrained": str(tokenizer_dir), "context_length": 4096, "num_samples": 1, "data_dir": str(data)},
    )
    results = lm_eval.simple_evaluate(model=RanksOnly(), tasks=["kvbench"], task_manager=manager, limit=1)["results"]
    assert len([t for t in results if t in TASKS]) == 14
    assert [results[f"kvbench_{c}"]["score,none"] for c in CATEGORIES] == [0.0, 0.0, 1.0, 0.0]
    assert results["kvbench"]["score,none"] == pytest.approx(0.25)
