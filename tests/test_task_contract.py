"""The contract every plug-in declares, checked for every registered task, dataset and launcher (in the
spirit of scikit-learn's common estimator checks): a new plug-in that breaks it fails here, not on a cluster.
Cheap: no model runs and no data beyond the shipped samples."""
from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from jepa_eval.battery import load_battery
from jepa_eval.datasets import DATASETS, ImageDataset
from jepa_eval.errors import UserError
from jepa_eval.launchers import LAUNCHERS, Launcher
from jepa_eval.task import TASKS, Task, TaskContext, TaskResult, build_params, register_task

ALL_POOLINGS = ("lastPOOL", "concatPOOL4", "blocksPOOL", "tokens")
SHIPPED_DATA = ("digits", "fashion-mnist-sample")   # in the package: loading them reads no outside data


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------------- tasks
@pytest.fixture(params=TASKS.names())
def task_cls(request) -> type[Task]:
    return TASKS.get(request.param)


def test_params_defaults_validate(task_cls):
    params = build_params(task_cls, {}, "test")   # types, then validate(): a default must pass its own checks
    assert isinstance(params, task_cls.Params)
    assert getattr(params, "validate", lambda: None)() is None


def test_primary_metric_is_declared(task_cls):
    primary = task_cls(build_params(task_cls, {}, "test")).primary_metric()
    assert isinstance(primary, str) and primary


def test_poolings_are_declared_and_the_defaults_accepted(task_cls):
    assert task_cls.poolings and task_cls.accepts
    assert task_cls.pooling_problem(list(task_cls.poolings)) is None


def test_task_class_has_its_own_docstring(task_cls):
    doc = task_cls.__dict__.get("__doc__") or ""   # not inherited: `jepa-eval list` prints the class's own
    assert doc.strip(), f"task '{task_cls.name}' has no docstring"


def test_run_is_typed_with_the_context(task_cls):
    hints = inspect.get_annotations(task_cls.run, eval_str=True)
    assert hints.get("ctx") is TaskContext and hints.get("return") is TaskResult


def test_unknown_parameter_is_refused(task_cls):
    with pytest.raises(UserError, match="unknown parameter 'no_such_param'"):
        build_params(task_cls, {"no_such_param": 1}, "test")


def test_battery_with_a_refused_pooling_fails_at_load(task_cls, tmp_path):
    refused = [[p] for p in ALL_POOLINGS if task_cls.pooling_problem([p])]
    if task_cls.single_pooling:
        refused.append([task_cls.poolings[0]] * 2)   # reads one pooling: a second one would be ignored
    if not refused:   # reads every pooling (e.g. rankme): a battery naming all of them loads
        path = write(tmp_path / "b.yaml", f"tasks: [{{task: {task_cls.name}, dataset: digits, "
                                          f"pooling: [{', '.join(ALL_POOLINGS)}]}}]")
        assert load_battery(path).entries[0].poolings == list(ALL_POOLINGS)
        return
    for poolings in refused:
        path = write(tmp_path / "b.yaml", f"tasks: [{{task: {task_cls.name}, dataset: digits, "
                                          f"pooling: [{', '.join(poolings)}]}}]")
        with pytest.raises(UserError) as err:
            load_battery(path)
        message = str(err.value)
        assert "\n" not in message and f"task '{task_cls.name}'" in message and poolings[-1] in message


def test_a_task_is_listed_with_its_description(capsys):
    from jepa_eval.cli import main
    assert main(["list", "tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert sorted(line.split()[0] for line in lines) == TASKS.names()
    assert all(len(line.split()) > 1 for line in lines), "a task without a description"


# ------------------------------------------------------------------- the runner uses the declarations
@dataclass
class FakeOutcome:
    metrics: dict
    pooling: str | None = None


OUTCOME = FakeOutcome({})


@pytest.fixture()
def fake_task():
    """A task that reads no features and returns ``OUTCOME``; removed from the registry afterwards."""
    @register_task("contract-fake")
    class FakeTask(Task):
        """Returns whatever the test sets."""
        splits = ("train",)
        accepts = ("lastPOOL", "concatPOOL*")
        primary = "declared"

        def run(self, ctx: TaskContext) -> TaskResult:
            return TaskResult(metrics=dict(OUTCOME.metrics), pooling=OUTCOME.pooling)

    yield FakeTask
    TASKS._items.pop("contract-fake")


def run_fake(tmp_path: Path, metrics: dict, pooling: str | None = None) -> dict:
    from jepa_eval.runner import plan, run_in_process
    OUTCOME.metrics, OUTCOME.pooling = metrics, pooling
    battery = write(tmp_path / "b.yaml", "tasks: [{task: contract-fake, dataset: digits, "
                                         "pooling: [lastPOOL, concatPOOL2]}]")
    paths = run_in_process(plan(["pixels:8"], battery, tmp_path / "out", tmp_path / "cache"), progress=False)
    return json.loads(paths[0].read_text())


def test_runner_records_the_declared_primary_metric_not_the_first_key(fake_task, tmp_path):
    rec = run_fake(tmp_path, {"other": 1.0, "declared": 2.0})
    assert rec["primary_metric"] == "declared" and list(rec["metrics"]) == ["other", "declared"]
    assert rec["pooling"] == "lastPOOL,concatPOOL2"     # no pooling chosen: the entry's


def test_runner_records_the_pooling_the_task_chose(fake_task, tmp_path):
    rec = run_fake(tmp_path, {"declared": 2.0}, pooling="concatPOOL2")
    assert rec["pooling"] == "concatPOOL2" and "pooling" not in rec["details"]


def test_a_result_without_its_primary_metric_is_an_error_and_nothing_is_recorded(fake_task, tmp_path):
    with pytest.raises(RuntimeError, match="declares primary metric 'declared'"):
        run_fake(tmp_path, {"other": 1.0})
    assert not list((tmp_path / "out").rglob("*.json"))


def test_report_figures_come_from_each_tasks_hook(fake_task):
    from jepa_eval.report.figures import ReportFigure, task_figures
    seen = []

    def figures(cls, records):
        seen.extend(records)
        return [ReportFigure("fake", "Fake", "", b"png")]
    fake_task.figures = classmethod(figures)
    records = [{"task": "contract-fake", "entry": "a"}, {"task": "knn", "entry": "b"},
               {"task": "a-task-from-a-newer-version", "entry": "c"}]
    assert [f.name for f in task_figures(records)] == ["fake"]   # knn draws none; unknown tasks are skipped
    assert seen == records[:1]                                     # a task sees only its own records


# ------------------------------------------------------------------------------------------- datasets
@pytest.fixture(params=DATASETS.names())
def dataset_name(request) -> str:
    return request.param


def test_dataset_factory_has_the_documented_signature(dataset_name):
    factory = DATASETS.get(dataset_name)
    params = inspect.signature(factory).parameters
    assert list(params) == ["root", "split"]   # get_dataset calls factory(root=..., split=...)
    assert params["root"].default is None and params["split"].default == "train"
    assert (factory.__doc__ or "").strip(), f"dataset '{dataset_name}' has no docstring (jepa-eval list)"


@pytest.mark.parametrize("name", SHIPPED_DATA)
def test_shipped_dataset_returns_an_image_dataset(name):
    ds = DATASETS.get(name)(root=None, split="train")
    assert isinstance(ds, ImageDataset) and len(ds) == len(ds.targets) > 0
    assert ds.classes and ds.identity and ds.eval_transform in ("square", "resize-crop")
    assert 0 <= int(ds.targets.min()) and int(ds.targets.max()) < len(ds.classes)


# ------------------------------------------------------------------------------------------ launchers
@pytest.fixture(params=LAUNCHERS.names())
def launcher_name(request) -> str:
    return request.param


def test_launcher_is_registered_under_its_name_and_implements_launch(launcher_name):
    cls = LAUNCHERS.get(launcher_name)
    assert issubclass(cls, Launcher) and cls.name == launcher_name
    assert cls.launch is not Launcher.launch
    shape = [(p.name, p.kind, p.default) for p in inspect.signature(cls.launch).parameters.values()]
    assert shape == [(p.name, p.kind, p.default) for p in inspect.signature(Launcher.launch).parameters.values()]
    assert isinstance(cls(), Launcher)   # `jepa-eval run` builds it with no arguments
    assert (cls.__doc__ or "").strip()


def test_launcher_owns_pretraining_and_the_states_of_its_jobs(launcher_name, tmp_path):
    from jepa_eval.launchers import JobState, LaunchOptions, PretrainRequest
    cls = LAUNCHERS.get(launcher_name)
    for method in ("pretrain", "job_states"):   # same signature as the base class: the commands call them alike
        shape = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(cls, method)).parameters.values()]
        base = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(Launcher, method)).parameters.values()]
        assert shape == base, method
    # a job it never ran: one JobState per job id, in the shared vocabulary
    gone = {"job_id": "999999999", "folder": str(tmp_path), "kind": "probe", "key": "k", "label": "l",
            "launcher": launcher_name}
    states = cls.job_states([gone])
    assert list(states) == ["999999999"] and isinstance(states["999999999"], JobState)
    assert states["999999999"].state in ("pending", "running", "done", "failed", "unknown")
    # pretraining resources are checked before anything starts or is submitted
    with pytest.raises(UserError):
        cls().pretrain(PretrainRequest({}, tmp_path / "run", nodes=2), LaunchOptions(partition="p"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["run", "watch", "pretrain"])
def test_commands_offer_every_registered_launcher(command):
    import importlib
    module = importlib.import_module(f"jepa_eval.commands.{command}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "launcher")
    assert sorted(action.metavar.strip("{}").split(",")) == LAUNCHERS.names()
