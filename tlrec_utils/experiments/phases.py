"""The pipeline's plan: every phase of a `PipelineConfig` with its exact command and the phases it reads
(`pipeline_phases`), built step by step (data, CoT, model, then each method's tuning chain, K-shot phases and
evaluations); nothing runs, nothing is written. The phases and their directories: pipeline.py's docstring.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..cot.registry import TEACHERS
from ..data.paths import REPO_ROOT
from ..errors import InputError
from .pipeline_config import (
    METHODS,
    DatasetSpec,
    PipelineConfig,
    check_values,
    setting,
    source_flag,
    source_specs,
    to_flags,
    uses_cot,
)

PHASE_DONE = "phase_done.json"


SETTING_ZERO_SHOT = "zero_shot"
COT_RECORDS_MODULE = "-m tlrec_utils.cot.records"  # the CoT phase when its records come from a file
MIX_MODULE = "-m tlrec_utils.data.mix"  # data/source when there are several sources


# Validation as the authors' scripts do it (ljy2222/TLRec rec_tuning.py and ins_tuning.py, commit 561abcf):
# evaluation and checkpoint every `eval_steps` steps (10; K-shot with K > 128: K / 128 * 5), best checkpoint
# kept, early stopping after 10 evaluations without improvement, 3 checkpoints kept; rec_tuning.py selects by
# validation loss (ins_tuning.py, used for the CoT and source phases, by validation AUC). Any of these can be
# overridden through the `tuning` mapping.
AUTHORS_VALIDATION = {"eval_strategy": "steps", "save_strategy": "steps", "load_best_model_at_end": True,
                      "metric_for_best_model": "loss", "early_stopping_patience": 10, "save_total_limit": 3}


COT_MAX_LENGTH_CAP = 2048


def check_config(cfg: PipelineConfig, check_data: bool = True) -> None:
    """Every setting checked (`check_values`); with `check_data`, also that the raw data is there (a plan for a
    machine without the data, `run_experiments.py --dry_run`, passes False)."""
    check_values(cfg)
    if cfg.accelerate_config and not Path(cfg.accelerate_config).is_file():
        raise InputError(f"--accelerate_config {cfg.accelerate_config}: file not found")
    if cfg.cot_file and not Path(cfg.cot_file).is_file():
        raise InputError(f"{cfg.cot_file}: CoT file not found (cot_file)")
    for spec in source_specs(cfg) if cfg.source_datasets else ():
        if spec.cot_file and not Path(spec.cot_file).is_file():
            raise InputError(f"{spec.cot_file}: CoT file not found (source_datasets: {spec.name}: cot_file)")
    # the raw data must be there before run_dir is made (not needed once a data phase is complete)
    if not check_data:
        return
    for domain in domains(cfg):
        if (Path(cfg.run_dir) / "data" / domain.folder / PHASE_DONE).is_file():
            continue
        if domain.spec.files:
            split_links(cfg, domain.spec.files, domain.files_flag)  # every file exists
            continue
        raw = raw_dir(cfg, domain.spec.subdir)
        if not raw.is_dir() and cfg.download:  # --download will make it: a file or a locked folder fails now
            from ..validation import check_output_dir

            check_output_dir(raw, "--data_dir" if cfg.data_dir else "data directory")
        if not raw.is_dir() and not cfg.download:
            flag = "--data_dir" if cfg.data_dir else "data directory"
            raise InputError(f"{flag}: {raw} not found (raw files of the {domain.label} dataset "
                             f"{domain.spec.dataset}; --download fetches the public ones)")


@dataclass
class Domain:
    """A dataset the pipeline prepares: the target, the source, or one of several sources."""

    which: str  # source | target
    spec: DatasetSpec  # what to prepare
    folder: str  # under run_dir/data: source, target, source-NAME
    label: str  # in messages: source, target, source netflix
    files_flag: str  # the config key of its published files


def domains(cfg: PipelineConfig) -> list[Domain]:
    """Every dataset the pipeline prepares, in order: each source (one: data/source; several: data/source-NAME,
    mixed into data/source by data.mix), then the target."""
    specs = source_specs(cfg)
    out = []
    if cfg.source_datasets:
        for i, spec in enumerate(specs):
            out.append(Domain("source", spec, f"source-{spec.name}", f"source {spec.name}",
                              f"{source_flag(i, spec)}: files"))
    else:
        out.append(Domain("source", specs[0], "source", "source", "--source_files"))
    target = DatasetSpec("target", cfg.target_dataset, cfg.target_subdir, cfg.item_kind, files=cfg.target_files,
                        prepare_args=list(cfg.target_prepare_args))
    return out + [Domain("target", target, "target", "target", "--target_files")]


@dataclass
class Phase:
    key: str  # unique, e.g. "data/source", "tlrec/source_tuning", "tallrec/eval/zero_shot"
    name: str  # for logs, e.g. "tlrec: source rec-tuning"
    kind: str  # prepare | cot | model | tuning | eval
    dir: Path
    script: str  # entry script (run_*.py) or module (-m tlrec_utils.model.tiny_llm)
    argv: list[str]
    after: list[str] = field(default_factory=list)  # keys of the phases whose outputs it reads
    method: str | None = None
    setting: str | None = None  # eval phases: zero_shot | k16_seed0 | ...
    start: str | None = None  # tuning phases: the key of the tuning phase whose model it continues (None: start model)
    links: dict = field(default_factory=dict)  # symlink -> file, made before the command runs (split files)

    @property
    def launched(self) -> bool:
        return self.kind in ("tuning", "eval")

    def command_line(self, cfg: PipelineConfig) -> list[str]:
        """The exact command that runs this phase alone (what `command.txt` holds)."""
        if self.script.startswith("-m "):
            return [sys.executable, "-m", self.script[3:], *self.argv]
        script = str(REPO_ROOT / self.script)
        if self.launched and cfg.launcher == "accelerate":
            return [*launcher_prefix(cfg), script, *self.argv]
        return [sys.executable, script, *self.argv]


def launcher_prefix(cfg: PipelineConfig) -> list[str]:
    prefix = ["accelerate", "launch"]
    if cfg.accelerate_config:
        prefix += ["--config_file", str(Path(cfg.accelerate_config).resolve())]
    if cfg.num_processes:
        if cfg.num_processes > 1 and not cfg.accelerate_config:
            prefix += ["--multi_gpu"]  # plain data parallel (torchrun); on CPU with --use_cpu it uses gloo
        prefix += ["--num_processes", str(cfg.num_processes)]
    return prefix + list(cfg.launcher_args)


def raw_dir(cfg: PipelineConfig, subdir: str) -> Path:
    from ..data.paths import data_dir

    return (data_dir(cfg.data_dir) / subdir).resolve()


def split_links(cfg: PipelineConfig, files: dict, flag: str, check_files: bool = True) -> dict[str, Path]:
    """{train.json: FILE, valid.json: FILE, test.json: FILE} of a domain's published `files` (the mapping
    checked by check_values; `check_files`: each file exists, a release's file named RELEASE/FILE fetched and
    verified first with --download)."""
    from ..data.download import RELEASES, release_file
    from ..data.paths import data_dir

    links = {}
    for split, name in files.items():
        path = Path(name) if Path(name).is_absolute() else data_dir(cfg.data_dir) / name
        release_name, _, file_name = str(name).partition("/")
        if check_files and cfg.download and file_name in getattr(RELEASES.get(release_name), "files", ()):
            release_file(release_name, file_name, cfg.data_dir, download=True, mirror=cfg.mirror)
        if check_files and not path.is_file():
            raise InputError(f"{flag}: {split}: {path} not found")
        links[f"{split}.json"] = path.resolve()
    return links


def model_keys() -> set[str]:
    from ..arguments import ModelArguments

    return {f.name for f in dataclasses.fields(ModelArguments)}


def _model_limit(base_model: str | None) -> int | None:
    """max_position_embeddings of a local base model's config.json (None when unknown)."""
    if not base_model:
        return None
    path = Path(base_model) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    for key in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def cot_max_length(cfg: PipelineConfig, base_model: str | None) -> int:
    """`cot_max_length`, else the model's limit capped at 2048. Padding is dynamic, so a larger cap costs only on
    records that need it: no CoT record up to this length is cut."""
    if cfg.cot_max_length:
        return cfg.cot_max_length
    limit = _model_limit(base_model) or COT_MAX_LENGTH_CAP
    return min(limit, COT_MAX_LENGTH_CAP)


def kshot_eval_steps(k: int | None) -> int:
    """The authors' rule (rec_tuning.py): every 10 steps for K <= 128, else K / 128 * 5; CoT and source
    phases (ins_tuning.py): 10."""
    if k is None or k <= 128:
        return 10
    return max(1, int(k / 128 * 5))


def cot_spec(cfg: PipelineConfig, step: str) -> tuple[tuple[int, ...] | None, str]:
    """(stages or None for all three, curriculum) of a CoT step of METHODS."""
    if step == "cot":
        stages = tuple(sorted(set(cfg.cot_stages)))
        return (None if stages == (1, 2, 3) else stages), cfg.cot_curriculum
    return None, "ordered" if step == "cot_staged" else "shuffled"


@dataclass
class ModelState:
    """The model a phase starts from: `model` (a base model, or a fully fine-tuned phase's output) and `adapter`
    (a LoRA adapter on it, or None), made by tuning phase `key` (None: the start model)."""

    model: str
    adapter: str | None = None
    key: str | None = None


@dataclass
class Plan:
    """What the steps of `pipeline_phases` share: the config, where things go, and the phases planned so far."""

    cfg: PipelineConfig
    run_dir: Path
    data: dict[str, Path]  # source, target -> the prepared folder
    phases: list[Phase] = field(default_factory=list)
    cot_file: Path | None = None  # the CoT records tuning reads (None: no method tunes on CoT)
    base_model: str = ""
    model_after: list[str] = field(default_factory=list)  # ["model"] when the tiny model is built
    sources: dict[str, Path] = field(default_factory=dict)  # several sources: name -> its prepared folder
    owners: dict = field(default_factory=dict)  # tuning chain -> (phase key, directory): shared phases run once

    @property
    def data_after(self) -> list[str]:
        return ["data/source", "data/target", *self.model_after]

    def after_state(self, state: ModelState) -> list[str]:
        return self.data_after + ([state.key] if state.key else [])


def pipeline_phases(cfg: PipelineConfig, check_data: bool = True) -> list[Phase]:
    """Every phase of this config in run order, with its exact command (`Phase.command_line(cfg)`) and the
    phases it depends on (`after`); nothing runs, nothing is written. Used by run_pipeline itself, by
    `run_experiments.py --dry_run` and for SLURM dependency chains (one job per phase, `--dependency=afterok`
    on the jobs of `after`). Running a phase's command alone, then `run_pipeline` again, skips nothing the
    command finished only if its output is complete: run_pipeline marks it done after checking.
    `check_data=False`: a plan on a machine without the data (nothing is read, fetched or checked there)."""
    check_config(cfg, check_data)
    run_dir = Path(cfg.run_dir).resolve()
    plan = Plan(cfg, run_dir, {w: run_dir / "data" / w for w in ("source", "target")})
    data_phases(plan, check_data)
    cot_phase(plan, check_data)
    model_phase(plan)
    start = ModelState(plan.base_model, str(Path(cfg.start_adapter).resolve()) if cfg.start_adapter else None)
    for method in cfg.methods:
        state = chain_phases(plan, method, start)
        kshot_and_eval_phases(plan, method, state)
    return plan.phases


def data_phases(plan: Plan, check_data: bool) -> None:
    """data/source, data/target: run_prepare_data on the raw release, or on links to published record files;
    with several sources, data/source-NAME each and data/source their mix (python -m tlrec_utils.data.mix)."""
    cfg = plan.cfg
    for domain in domains(cfg):
        spec, out = domain.spec, plan.run_dir / "data" / domain.folder
        dataset, raw = spec.dataset, raw_dir(cfg, spec.subdir)
        links = split_links(cfg, spec.files, domain.files_flag, check_data) if spec.files else {}
        if links:  # published records picked file by file: run_prepare_data reads links to them
            dataset, raw = "records", plan.run_dir / "raw" / domain.folder
        argv = ["--dataset", dataset, "--raw_dir", str(raw), "--output_dir", str(out),
                "--max_windows", str(cfg.max_windows), "--item_kind", spec.item_kind]
        if cfg.download and not links:
            from ..data.download import RELEASES

            argv += ["--download"] + (["--release", spec.subdir] if spec.subdir in RELEASES else [])
            argv += ["--mirror", cfg.mirror] if cfg.mirror else []
        argv += ["--target_style", spec.target_style] if spec.target_style else []
        argv += list(spec.prepare_args)
        plan.phases.append(Phase(f"data/{domain.folder}", f"prepare {domain.label}", "prepare", out,
                                 "run_prepare_data.py", argv,
                                 links={raw / name: target for name, target in links.items()}))
        if domain.folder.startswith("source-"):
            plan.sources[spec.name] = out
    if plan.sources:
        specs = {s.name: s for s in source_specs(cfg)}
        argv = ["--sources", *[f"{name}={folder}" for name, folder in plan.sources.items()], "--output_dir",
                str(plan.data["source"])]
        shares = [f"{name}={s.records}" for name, s in specs.items() if s.records]
        argv += ["--records", *shares] if shares else []
        plan.phases.insert(len(plan.sources), Phase("data/source", "mix the sources", "prepare", plan.data["source"],
                                                    MIX_MODULE, argv, after=[f"data/source-{n}" for n in specs]))


def published_cot_file(cfg: PipelineConfig, check_data: bool) -> Path:
    """The CoT records file of `cot_file`, else DATA_DIR/tlrec-cot/stage123.json (teacher: published), fetched
    and verified with --download (a plan, `check_data` False, only says where it will be)."""
    from ..data.paths import data_dir

    if cfg.cot_file:
        return Path(cfg.cot_file).resolve()
    if not check_data:
        return (data_dir(cfg.data_dir) / "tlrec-cot" / "stage123.json").resolve()
    from ..data.download import release_file
    from ..validation import check_output_dir

    if cfg.download and not (data_dir(cfg.data_dir) / "tlrec-cot" / "stage123.json").is_file():
        check_output_dir(data_dir(cfg.data_dir) / "tlrec-cot", "--data_dir")
    return release_file("tlrec-cot", "stage123.json", cfg.data_dir, download=cfg.download,
                        mirror=cfg.mirror).resolve()


def cot_phase(plan: Plan, check_data: bool) -> None:
    """cot/: the CoT records from a file (python -m tlrec_utils.cot.records), or run_cot_generation on the source
    train split; only when a method tunes on CoT. Several sources: cot-NAME per source (its cot_file, or the
    teacher on its own records and wording), then cot/ their records in the sources' order."""
    cfg, run_dir = plan.cfg, plan.run_dir
    if not uses_cot(cfg):
        return
    plan.cot_file = run_dir / "cot" / "cot_train.json"
    if plan.sources:
        files = []
        for spec in source_specs(cfg):
            out = run_dir / f"cot-{spec.name}"
            plan.phases.append(cot_generation(plan, f"cot-{spec.name}", f"{spec.name}: ", spec.cot_file,
                                              plan.sources[spec.name], spec.item_kind, out, f"data/source-{spec.name}"))
            files.append(f"{spec.name}={out / 'cot_train.json'}")
        argv = ["cot_records", "--cot_file", *files, "--output_dir", str(run_dir / "cot")]
        plan.phases.append(Phase("cot", "CoT records of the sources", "cot", run_dir / "cot", COT_RECORDS_MODULE, argv,
                                 after=[f"cot-{spec.name}" for spec in source_specs(cfg)]))
        return
    cot_file = None
    if cfg.cot_file or TEACHERS[cfg.teacher].build is None:  # records from a file, asked of no one
        cot_file = published_cot_file(cfg, check_data)
    plan.phases.append(cot_generation(plan, "cot", "", cot_file, plan.data["source"], cfg.item_kind, run_dir / "cot",
                                      "data/source"))


def cot_generation(plan: Plan, key: str, label: str, cot_file, data: Path, kind: str, out: Path, after: str) -> Phase:
    """A CoT phase: the records of `cot_file` (python -m tlrec_utils.cot.records), or run_cot_generation with the
    config's teacher on the prepared folder `data`, in the wording `kind`."""
    cfg = plan.cfg
    if cot_file is not None:
        argv = ["cot_records", "--cot_file", str(Path(cot_file).resolve()), "--output_dir", str(out)]
        return Phase(key, f"{label}CoT records from a file", "cot", out, COT_RECORDS_MODULE, argv)
    argv = ["--data_dir", str(data), "--output_dir", str(out), "--teacher", cfg.teacher,
            "--model", cfg.teacher_model, "--kind", kind, "--hit_match", cfg.hit_match,
            "--context_style", cfg.cot_context_style, "--no-progress"]
    argv += ["--mode", cfg.teacher_mode] if cfg.teacher_mode != "live" else []
    argv += ["--allow_same_user_neighbors"] if cfg.cot_same_user_neighbors else []
    for flag, value in (("--base_url", cfg.teacher_base_url), ("--max_users", cfg.cot_max_users),
                        ("--max_cost", cfg.cot_max_cost), ("--system_prompt", cfg.teacher_system_prompt)):
        if value is not None:
            argv += [flag, str(value)]
    return Phase(key, f"{label}cot generation", "cot", out, "run_cot_generation.py", argv, after=[after])


def model_phase(plan: Plan) -> None:
    """model/: the tiny LLaMA built from the data, only without `base_model`; sets `plan.base_model`."""
    cfg = plan.cfg
    if cfg.base_model:
        plan.base_model = str(Path(cfg.base_model).resolve()) if Path(cfg.base_model).exists() else cfg.base_model
        return
    plan.base_model = str(plan.run_dir / "model")
    text = [str(plan.data["source"] / "train.json"), str(plan.data["target"] / "train.json")]
    text += [str(plan.cot_file)] if plan.cot_file else []
    argv = ["--data", *text, "--output_dir", plan.base_model, "--vocab_size", str(cfg.tiny_vocab_size),
            "--hidden_size", str(cfg.tiny_hidden_size)]
    after = ["data/source", "data/target"] + (["cot"] if plan.cot_file else [])
    plan.phases.append(Phase("model", "tiny LLaMA", "model", Path(plan.base_model), "-m tlrec_utils.model.tiny_llm",
                             argv, after))
    plan.model_after = ["model"]


def trained(plan: Plan, out: Path, key: str) -> ModelState:
    """The model a tuning phase leaves in `out`: the model itself (full fine-tuning) or an adapter on the base."""
    if setting(plan.cfg, "tuning", "finetune") == "full":
        return ModelState(str(out), None, key)
    return ModelState(plan.base_model, str(out), key)


def chain_phases(plan: Plan, method: str, state: ModelState) -> ModelState:
    """The method's tuning chain before its K-shot phases (METHODS: CoT tuning, source rec-tuning); a phase that
    an earlier method's chain has already planned is not planned again. Returns the model the chain ends with."""
    cfg, chain = plan.cfg, ()
    for step in METHODS[method]:
        cot = cot_spec(cfg, step) if step.startswith("cot") else None
        chain = chain + ((step[:3], cot) if cot else (step,),)  # tlrec and tlrec_staged may be one chain
        label, sub = ("CoT tuning", "cot_tuning") if cot else ("source rec-tuning", "source_tuning")
        if chain not in plan.owners:
            out = plan.run_dir / method / sub
            if cot:
                argv = tuning_argv(plan, out, state, [plan.cot_file], cfg.cot_epochs, "cot", cot=cot)
                after = plan.data_after + ["cot"]
            else:
                argv = tuning_argv(plan, out, state, [plan.data["source"] / "train.json"], cfg.source_epochs,
                                   "source", k_shot=cfg.source_records)
                after = list(plan.data_after)
            after += [state.key] if state.key else []
            key = f"{method}/{sub}"
            plan.phases.append(Phase(key, f"{method}: {label}", "tuning", out, "run_tuning.py", argv, after, method,
                                     start=state.key))
            plan.owners[chain] = (key, out)
        key, out = plan.owners[chain]
        state = trained(plan, out, key)
    return state


def kshot_and_eval_phases(plan: Plan, method: str, state: ModelState) -> None:
    """The method's zero-shot evaluation of `state`, then for every K and seed a K-shot target rec-tuning phase
    from it and that phase's evaluation."""
    cfg, mdir = plan.cfg, plan.run_dir / method

    def add_eval(setting_name: str, eval_state: ModelState, eval_after: list[str]):
        out = mdir / "eval" / setting_name
        plan.phases.append(Phase(f"{method}/eval/{setting_name}", f"{method}: eval {setting_name}", "eval", out,
                                 "run_eval.py", eval_argv(plan, out, eval_state), eval_after, method, setting_name))

    add_eval(SETTING_ZERO_SHOT, state, plan.after_state(state))
    for k in cfg.k_shots:
        for seed in cfg.seeds:
            name = f"k{k}_seed{seed}"
            out = mdir / name
            argv = tuning_argv(plan, out, state, [plan.data["target"] / "train.json"], cfg.kshot_epochs, "kshot",
                               k_shot=k, seed=seed)
            key = f"{method}/{name}"
            plan.phases.append(Phase(key, f"{method}: {k}-shot target rec-tuning (seed {seed})", "tuning", out,
                                     "run_tuning.py", argv, plan.after_state(state), method, start=state.key))
            add_eval(name, trained(plan, out, key), [key])


def tuning_argv(plan: Plan, out: Path, state: ModelState, train_files, epochs, phase_kind: str, k_shot=None, seed=0,
                cot=None) -> list[str]:
    """Each run_tuning flag once, with its effective value: what the pipeline sets, then `tuning`, then the
    phase's mapping (later ones win; a key keeps its first position); `tuning_args` (raw flags) last."""
    cfg, data = plan.cfg, plan.data
    opts = {"base_model": state.model, "output_dir": str(out), "train_files": [str(f) for f in train_files],
            "num_train_epochs": epochs, "seed": seed, "init_adapter": state.adapter, "k_shot": k_shot,
            "k_shot_seed": seed if k_shot else None,
            # checkpoints for resumption (SIGTERM); the mappings may change these
            "save_strategy": "steps", "save_steps": 50, "save_total_limit": 1, "dataloader_num_workers": 0,
            # the phase's effect: held-out records scored before and after (phase_effect, check_start); a
            # K-shot phase, which no phase continues, scores the target records only
            "effect_files": [f"{w}={data[w] / 'valid.json'}"
                             for w in (("target",) if phase_kind == "kshot" else ("source", "target"))],
            "effect_records": cfg.effect_records,
            "effect_max_length": setting(cfg, "tuning", "max_length"),  # the rec length, in the CoT phase too
            "heldout_records": cfg.cot_heldout_records if phase_kind == "cot" else None}
    if cfg.validate:
        steps = kshot_eval_steps(k_shot if phase_kind == "kshot" else None)
        opts.update(AUTHORS_VALIDATION, val_file=str(data["target"] / "valid.json"), eval_steps=steps,
                    save_steps=steps)
        if "eval_steps" in cfg.tuning and "save_steps" not in cfg.tuning:
            opts["save_steps"] = cfg.tuning["eval_steps"]
    opts["prompt_template"] = cfg.prompt_template
    opts.update({k: v for k, v in cfg.tuning.items() if not (phase_kind == "cot" and k == "max_length")})
    if phase_kind == "cot":
        stages, curriculum = cot
        opts.update(max_length=cot_max_length(cfg, plan.base_model), stages=list(stages) if stages else None,
                    curriculum=curriculum)
    opts.update(getattr(cfg, f"{phase_kind}_tuning"))
    return to_flags(opts) + list(cfg.tuning_args)


def eval_argv(plan: Plan, out: Path, state: ModelState) -> list[str]:
    """run_eval's flags: the model, the target test split, the rec-tuning length, `tuning`'s model settings,
    then `eval`."""
    cfg, data = plan.cfg, plan.data
    opts = {"base_model": state.model, "adapter": state.adapter, "test_file": str(data["target"] / "test.json"),
            "items_file": str(data["target"] / "items.json"), "output_dir": str(out), "limit": cfg.test_limit,
            "max_length": cfg.tuning.get("max_length"),  # evaluate with the length the model was rec-tuned with
            "prompt_template": cfg.prompt_template}
    opts.update({k: v for k, v in cfg.tuning.items() if k in model_keys()})
    return to_flags({**opts, **cfg.eval})
