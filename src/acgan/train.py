"""The training loop: set up a run, call trainer.train_step for each batch, and do the periodic work rank-aware."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acgan import distributed as dist_utils
from acgan.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    latest_checkpoint,
    load_checkpoint,
    new_run_dir,
    resolve_resume,
)
from acgan.config import TrainConfig, merge_resumed_config, write_config_json
from acgan.data import EpochSampler, ImageDataset, load_dataset, make_sampler, release_pages
from acgan.device import resolve_device
from acgan.errors import UserError
from acgan.generator import class_grid_inputs
from acgan.models import count_parameters
from acgan.precision import LAYOUTS, autocast, choose_precision, describe_choice, probe_key
from acgan.runlog import RunLog, real_grid
from acgan.sample import save_grid
from acgan.saver import Saver
from acgan.storage import WriteError, check_writable_dir, warn
from acgan.trainer import (
    StatsMeter,
    StepOptions,
    Trainer,
    build_trainer,
    restore_trainer,
    step_timer,
    train_step,
    trainer_state,
)

SAMPLES_PER_CLASS = 10


def load_train_data(config: TrainConfig, info: dist_utils.DistInfo) -> ImageDataset:
    """The training split; under torchrun rank 0 downloads first so ranks never race on one file."""
    kwargs = dict(split="train", image_size=config.image_size, num_workers=config.num_workers, seed=config.seed,
                  classes=config.classes, class_names_file=config.class_names_file)
    if info.distributed and config.download:
        if info.is_main:
            load_dataset(config.dataset, config.root_dir, download=True, **kwargs)
        dist_utils.barrier()
    return load_dataset(config.dataset, config.root_dir, download=config.download, **kwargs)


def _run_parent(config: TrainConfig, ckpt_path: Path | None) -> Path:
    """The folder a run's files will be written in: the resumed run's own directory, else --outdir."""
    if ckpt_path is not None and ckpt_path.parent.name == "checkpoints":
        owner = ckpt_path.resolve().parent.parent
        if (owner / "config.json").is_file():
            return owner
    return Path(config.outdir)


def check_outdir(config: TrainConfig, ckpt_path: Path | None, info: dist_utils.DistInfo) -> None:
    """Refuse an --outdir that cannot be created or written, before any data is loaded; every rank stops."""
    problem = None
    if info.is_main:
        try:
            check_writable_dir(_run_parent(config, ckpt_path))
        except UserError as e:
            problem = str(e)
    problem = dist_utils.broadcast_object(problem, info)
    if problem:
        raise UserError(str(problem))


def prepare_run_dir(config: TrainConfig, ckpt_path: Path | None, info: dist_utils.DistInfo) -> Path:
    """Continue the run a checkpoint belongs to, or make a new numbered one; rank 0 decides for all."""
    run_dir = None
    if info.is_main:
        owner = ckpt_path.resolve().parent.parent if ckpt_path else None
        if owner is not None and ckpt_path.parent.name == "checkpoints" and (owner / "config.json").is_file():
            run_dir = owner
        else:
            try:
                run_dir = new_run_dir(Path(config.outdir), config.dataset)
            except OSError as e:
                raise UserError(f"--outdir {config.outdir}: cannot create a run directory ({e.strerror})") from None
    return Path(str(dist_utils.broadcast_object(str(run_dir) if run_dir else "", info)))


def total_steps(config: TrainConfig, num_batches: int) -> int:
    """Steps the run ends at: all epochs, or --max_steps if that comes first."""
    steps = config.num_epochs * num_batches
    return min(steps, config.max_steps) if config.max_steps else steps


def make_evaluator(config: TrainConfig, dataset: ImageDataset, device: torch.device,
                   info: dist_utils.DistInfo) -> Any:
    """A function G -> metrics for --eval_every on rank 0 (None when evaluation is off or on other ranks)."""
    if config.eval_every is None or not info.is_main:
        return None
    from acgan.metrics.evaluate import parse_metrics
    from acgan.metrics.run import evaluate_generator, open_classifier, open_detector

    metrics = parse_metrics(config.eval_metrics)
    # Building the nets that load the detector and the classifier draws initial weights from the global RNG,
    # after the run's seed (and, on resume, after its restored stream): forked, so measuring a run never
    # changes the run and a resumed run with --eval_every stays the uninterrupted one.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        detector = open_detector(metrics, config.detector, device)  # fails now, not hours into the run
        classifier = open_classifier(metrics, config.classifier, dataset, device)

    def evaluate(G: nn.Module) -> dict[str, float]:
        results = evaluate_generator(G, dataset, metrics, num_samples=config.eval_samples, detector=detector,
                                     classifier=classifier, seed=config.seed)
        release_pages(dataset)  # a pass over a prepared file's map need not stay in this process's RSS
        return results

    return evaluate


def _evaluate(tr: Trainer, evaluate: Any, log: RunLog, save_best: Any) -> None:
    """Score G (its EMA when there is one), log the numbers beside the step's stats, keep best.pt.

    best.pt is chosen by FID; a run that measures no FID but the classifier accuracy (offline) uses cacc.
    """
    from acgan.metrics.evaluate import with_sample_count

    if evaluate is not None:
        results = evaluate(tr.G_eval)
        log.stats({"step": tr.step, **with_sample_count(results)})
        fid, cacc = results.get("fid"), results.get("cacc")
        if fid is not None:
            if math.isfinite(fid) and fid < tr.extra.get("best_fid", math.inf):
                tr.extra["best_fid"] = fid
                save_best()
        elif cacc is not None and cacc > tr.extra.get("best_cacc", -1.0):
            tr.extra["best_cacc"] = cacc
            save_best()
    dist_utils.barrier()  # other ranks wait while rank 0 evaluates


def pick_precision(config: TrainConfig, num_classes: int, device: torch.device,
                   info: dist_utils.DistInfo) -> tuple[str, str, dict[str, float]]:
    """The precision and nets' layout to train in: for 'auto' on a CPU the fastest measured (rank 0 decides)."""
    from acgan.metrics.cache import default_cache_dir

    choice: tuple[str, str, dict[str, float]] = ("", "", {})
    if info.is_main:
        key = probe_key(device=device.type, arch=config.arch, batch_size=config.batch_size, nz=config.nz,
                        image_size=config.image_size, num_classes=num_classes, d_dropout=config.d_dropout)
        precision, layout, times, measured = choose_precision(config.precision, device, key, default_cache_dir(),
                                                              step_timer(config, num_classes, device))
        if times or layout != "nchw":
            print(describe_choice(precision, layout, times, measured, default_cache_dir()))
        choice = (precision, layout, times)
    return dist_utils.broadcast_object(choice, info)


def _finite(row: dict[str, float], tr: Trainer) -> bool:
    """True when every logged loss and every weight is finite."""
    params = (*tr.G_raw.parameters(), *tr.D_raw.parameters())
    return all(math.isfinite(v) for v in row.values()) and bool(torch.stack([p.isfinite().all() for p in params]).all())


def _recover(tr: Trainer, config: TrainConfig, run_dir: Path, info: dist_utils.DistInfo) -> None:
    """On divergence: stop naming the last good checkpoint, or (--on_nan rollback) reload it with halved lrs."""
    good, bad_step = latest_checkpoint(run_dir), tr.step
    rollbacks = int(tr.extra.get("rollbacks", 0))
    if config.on_nan == "stop" or good is None or rollbacks >= config.max_rollbacks:
        where = f"; last good checkpoint: {good} (resume with --resume {good})" if good else ""
        tried = f" after {rollbacks} rollbacks" if rollbacks else ""
        raise UserError(f"training diverged at step {bad_step}: non-finite loss or weights{tried}{where}")
    current = [g["lr"] for opt in (tr.opt_G, tr.opt_D) for g in opt.param_groups]
    restore_trainer(tr, load_checkpoint(good), info, config.seed)
    for group, lr in zip([g for opt in (tr.opt_G, tr.opt_D) for g in opt.param_groups], current, strict=True):
        group["lr"] = min(lr, group["lr"]) * 0.5  # the rate in use: the checkpoint may predate a rollback
    tr.extra["rollbacks"] = rollbacks + 1
    if info.is_main:
        print(f"\nnon-finite values at step {bad_step}: rolled back to step {tr.step} ({good.name}), "
              f"learning rates halved to {tr.opt_G.param_groups[0]['lr']:g} ({rollbacks + 1}/{config.max_rollbacks})")


def train(config: TrainConfig, explicit: frozenset[str] = frozenset()) -> Path:
    """Train (or resume) an ACGAN; returns the run directory. Works alone or under torchrun."""
    info = dist_utils.env_info()
    device = resolve_device(config.device, info.local_rank if info.distributed else None)
    # signals are caught from the start: a SIGTERM during setup stops after the first step, one during the
    # final plots is simply absorbed, and the exit status is 0 either way
    with dist_utils.process_group(info, device), dist_utils.StopRequest() as stop:
        return _train(config, explicit, info, device, stop)


def _setup(config: TrainConfig, explicit: frozenset[str], info: dist_utils.DistInfo, device: torch.device,
           ) -> tuple[TrainConfig, ImageDataset, Trainer, Path, EpochSampler, str]:
    """Resolve the config (a resumed run's own), load the data, build or restore the trainer, write config.json."""
    ckpt_path = resolve_resume(config.resume, config.outdir)
    state = load_checkpoint(ckpt_path) if ckpt_path else None
    if state is not None:
        config = merge_resumed_config(state["config"], config, explicit)
    elif config.resume == "auto" and info.is_main:
        print(f"--resume auto: no checkpoint under {config.outdir}, starting a new run")
    config = config.resolved()  # the arch's recipe filled in: config.json records what really runs
    check_outdir(config, ckpt_path, info)
    torch.manual_seed(config.seed * info.world_size + info.rank)  # per-rank noise and dropout streams
    dataset = load_train_data(config, info)
    if state is not None and tuple(state["class_names"]) != dataset.class_names:
        raise UserError(f"{ckpt_path} was trained on other classes than this {config.dataset} data")
    K = dataset.num_classes
    precision, layout, probe = pick_precision(config, K, device, info)
    tr = build_trainer(config, K, device, info, LAYOUTS[layout])
    if state is not None:
        restore_trainer(tr, state, info, config.seed)
    # a node that cannot see the checkpoint would silently train from scratch beside the others
    dist_utils.check_agree(tr.step, "the step to resume from (every node must see --outdir/--resume)", info)
    run_dir = prepare_run_dir(config, ckpt_path, info)
    sampler, placement = make_sampler(dataset, config.batch_size, device=device, seed=config.seed, rank=info.rank,
                                      world_size=info.world_size, stream=config.stream)
    if state is not None:  # the saved position counts batches of the saved world size
        tr.epoch, tr.batch = dist_utils.reshard_position(tr.epoch, tr.batch, int(state.get("world_size", 1)),
                                                         info.world_size, sampler.num_batches)
    total, global_batch = total_steps(config, sampler.num_batches), config.batch_size * info.world_size
    if info.is_main:
        write_config_json(config, run_dir / "config.json", {
            "class_names": list(dataset.class_names), "num_images": len(dataset), "world_size": info.world_size,
            "global_batch_size": global_batch, "resolved_device": str(device), "resolved_precision": precision,
            "resolved_layout": layout, "data_placement": sampler.placement,
            "precision_seconds_per_step": probe,
            "total_steps": total, "params_G": count_parameters(tr.G_raw), "params_D": count_parameters(tr.D_raw)})
        print(f"run {run_dir}: {len(dataset)} images, {K} classes, {device}, {precision}, "
              f"global batch {global_batch}, steps {tr.step} -> {total}")
        print(placement)
    return config, dataset, tr, run_dir, sampler, precision


def _log_or_recover(tr: Trainer, meter: StatsMeter, log: RunLog, pbar: Any, config: TrainConfig, run_dir: Path,
                    info: dist_utils.DistInfo) -> bool:
    """Log the interval's statistics; on non-finite ones roll back or stop instead. True when rolled back."""
    row = meter.reduce()
    ips = meter.images_per_s(tr.step)
    if not _finite(row, tr):
        _recover(tr, config, run_dir, info)
        meter.reset(tr.step)
        pbar.n = tr.step
        return True
    log.stats({"step": tr.step, "epoch": tr.epoch, **row, "images_per_s": ips})
    pbar.set_postfix(epoch=tr.epoch, loss_D=f"{row['loss_D']:.3f}", loss_G=f"{row['loss_G']:.3f}",
                     img_s=f"{ips:.0f}", refresh=False)
    meter.reset(tr.step)
    return False


def _train(config: TrainConfig, explicit: frozenset[str], info: dist_utils.DistInfo, device: torch.device,
           stop: dist_utils.StopRequest) -> Path:
    """Setup, the loop, and the final checkpoint."""
    from tqdm import tqdm

    config, dataset, tr, run_dir, sampler, precision = _setup(config, explicit, info, device)
    K, total = dataset.num_classes, total_steps(config, sampler.num_batches)
    log = RunLog(run_dir, info.is_main, tr.step)
    z_fixed, y_fixed = (t.to(device) for t in class_grid_inputs(K, SAMPLES_PER_CLASS, config.nz, config.seed))
    if info.is_main and tr.step == 0:
        reals = run_dir / "samples" / "reals.png"
        log.attempt("real images grid", reals, lambda: save_grid(real_grid(dataset, SAMPLES_PER_CLASS), reals,
                                                                 SAMPLES_PER_CLASS))
    amp, opts = autocast(device, precision), StepOptions.from_config(config, K)
    evaluate = make_evaluator(config, dataset, device, info)
    saver = Saver(run_dir, info, config.keep_ckpts)

    def state() -> dict:
        return trainer_state(tr, config, dataset.class_names, info.world_size)

    def save(final: bool) -> Path | None:
        if not _finite({}, tr):  # never save what rollback would reload; DDP keeps every rank's weights equal
            if info.is_main:
                print(f"\nnot writing a checkpoint at step {tr.step}: the weights are not finite")
            return None
        nxt = min(total, (tr.step // config.ckpt_every + 1) * config.ckpt_every)
        return saver.save(state, tr.step, final=final, next_step=nxt)

    def save_best() -> None:
        try:
            atomic_save({**state(), "format_version": FORMAT_VERSION}, run_dir / "checkpoints" / "best.pt")
        except WriteError as e:
            warn(f"best.pt not updated at step {tr.step}, training goes on: {e}")

    meter, stopped = StatsMeter(device, tr.step, config.batch_size * info.world_size), False
    with tqdm(total=total, initial=tr.step, disable=not info.is_main, dynamic_ncols=True, unit="step") as pbar:
        while tr.step < total and not stopped:
            for x_real, y_real in sampler.epoch(tr.epoch, start=tr.batch):
                update_G = (tr.step + 1) % config.n_dis == 0  # G learns once per n_dis D updates
                meter.add(train_step(tr, x_real, y_real, opts, amp, update_G), update_G)
                tr.step, tr.batch = tr.step + 1, tr.batch + 1
                if tr.batch == sampler.num_batches:
                    tr.epoch, tr.batch = tr.epoch + 1, 0
                pbar.update(1)
                last = tr.step >= total
                if tr.step % config.log_every == 0 or last:
                    if _log_or_recover(tr, meter, log, pbar, config, run_dir, info):
                        break  # re-enter the epoch at the restored position
                    if info.distributed:
                        stopped = dist_utils.any_rank(stop.requested, device)
                if tr.step % config.sample_every == 0 or last:
                    log.samples(tr.G_eval, z_fixed, y_fixed, tr.step, SAMPLES_PER_CLASS)
                if config.eval_every and (tr.step % config.eval_every == 0 or last):
                    _evaluate(tr, evaluate, log, save_best)
                if not info.distributed:
                    stopped = stop.requested
                if tr.step % config.ckpt_every == 0 or last or stopped:
                    save(final=last or stopped)
                if last or stopped:
                    break
    log.close()
    if info.is_main:
        print(f"{'stopped' if stopped else 'finished'} at step {tr.step} (epoch {tr.epoch}); outputs in {run_dir}")
    return run_dir
