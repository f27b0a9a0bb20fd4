"""The training loop: set up a run, alternate the D and G steps, and do the periodic work rank-aware."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
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
    save_checkpoint,
)
from acgan.config import TrainConfig, merge_resumed_config, write_config_json
from acgan.data import EpochSampler, ImageDataset, load_dataset
from acgan.errors import UserError
from acgan.losses import d_loss_fake, d_loss_real, g_loss
from acgan.models import Discriminator, Generator, count_parameters
from acgan.plots import read_stats, write_plots
from acgan.precision import autocast, maybe_compile, resolve_precision
from acgan.sample import class_grid_inputs, generate, make_grid, save_grid

STAT_KEYS = ("loss_D_real", "loss_D_fake", "loss_G", "D_x", "D_G_z1", "D_G_z2", "acc_real", "acc_fake")
SAMPLES_PER_CLASS = 10


@dataclass
class Trainer:
    """The nets, their optimizers and where the run stands; `G_raw`/`D_raw` are the unwrapped modules."""

    G: nn.Module
    D: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    G_raw: Generator
    D_raw: Discriminator
    step: int = 0
    epoch: int = 0
    batch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def build_trainer(config: TrainConfig, num_classes: int, device: torch.device,
                  info: dist_utils.DistInfo) -> Trainer:
    """The paper's nets and Adam optimizers, wrapped in DDP under torchrun."""
    G_raw = Generator(config.nz, num_classes, config.image_size).to(device)
    D_raw = Discriminator(num_classes, config.image_size).to(device)
    if info.distributed and config.sync_bn:  # batch statistics over the global batch, not per rank
        if device.type != "cuda":
            raise UserError("--sync_bn needs CUDA GPUs: PyTorch's SyncBatchNorm has no CPU implementation")
        G_raw, D_raw = nn.SyncBatchNorm.convert_sync_batchnorm(G_raw), nn.SyncBatchNorm.convert_sync_batchnorm(D_raw)
    fused = device.type == "cuda"  # one kernel for the whole Adam update
    betas = (config.beta1, config.beta2)
    opt_G = torch.optim.Adam(G_raw.parameters(), lr=config.lr, betas=betas, fused=fused)
    opt_D = torch.optim.Adam(D_raw.parameters(), lr=config.lr, betas=betas, fused=fused)
    G, D = maybe_compile(G_raw, config.compile, device), maybe_compile(D_raw, config.compile, device)
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        G, D = DDP(G, device_ids=ids), DDP(D, device_ids=ids)
    return Trainer(G, D, opt_G, opt_D, G_raw, D_raw)


def train_step(tr: Trainer, x_real: torch.Tensor, y_real: torch.Tensor, nz: int, num_classes: int,
               amp: contextlib.AbstractContextManager) -> dict[str, torch.Tensor]:
    """One D update then one G update; returns detached statistics (no host sync)."""
    B, device = x_real.shape[0], x_real.device
    z = torch.randn(B, nz, device=device)  # (B, nz)
    y_fake = torch.randint(0, num_classes, (B,), device=device)  # uniform over all classes
    # (1) Update D: maximize L_S + L_C on real and on fake images
    tr.opt_D.zero_grad(set_to_none=True)
    with amp:
        source, logits = tr.D(x_real)
    loss_real, stats = d_loss_real(source, logits, y_real)
    loss_real.backward()
    with amp:
        x_fake = tr.G(z, y_fake)  # (B, 3, S, S)
        source, logits = tr.D(x_fake.detach())
    loss_fake, stats_fake = d_loss_fake(source, logits, y_fake)
    loss_fake.backward()
    tr.opt_D.step()
    # (2) Update G: maximize L_C - L_S, i.e. fool the source head while keeping the class readable
    tr.opt_G.zero_grad(set_to_none=True)
    tr.D_raw.requires_grad_(False)  # D's weight gradients are not needed here: skip computing them
    # DDP(D) must not reduce here: D takes no step, and its frozen weights never mark their gradients ready
    no_sync = tr.D.no_sync if hasattr(tr.D, "no_sync") else contextlib.nullcontext
    with no_sync():  # one context for forward and backward: a generator context manager cannot be re-entered
        with amp:
            source, logits = tr.D(x_fake)
        loss, stats_g = g_loss(source, logits, y_fake)
        loss.backward()
    tr.D_raw.requires_grad_(True)
    tr.opt_G.step()
    return {**stats, **stats_fake, **stats_g}


def trainer_state(tr: Trainer, config: TrainConfig, class_names: tuple[str, ...], world_size: int) -> dict:
    """Everything needed to resume exactly, as tensors and plain Python values (weights_only-safe)."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"G": tr.G_raw.state_dict(), "D": tr.D_raw.state_dict(), "opt_G": tr.opt_G.state_dict(),
            "opt_D": tr.opt_D.state_dict(), "step": tr.step, "epoch": tr.epoch, "batch": tr.batch,
            "rng": rng, "config": config.to_dict(), "class_names": list(class_names),
            "world_size": world_size, **tr.extra}


def restore_trainer(tr: Trainer, state: dict, info: dist_utils.DistInfo, seed: int) -> None:
    """Load nets, optimizers, position and RNG; a different world size reseeds each rank instead."""
    tr.G_raw.load_state_dict(state["G"])
    tr.D_raw.load_state_dict(state["D"])
    tr.opt_G.load_state_dict(state["opt_G"])
    tr.opt_D.load_state_dict(state["opt_D"])
    tr.step, tr.epoch, tr.batch = int(state["step"]), int(state["epoch"]), int(state["batch"])
    tr.extra.update({k: state[k] for k in ("rollbacks", "best_fid") if k in state})
    if info.world_size == 1 and int(state.get("world_size", 1)) == 1:
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    else:  # other ranks' RNG streams were never saved: derive fresh, distinct ones
        torch.manual_seed((seed * info.world_size + info.rank) * 1_000_003 + tr.step)


class RunLog:
    """The run's outputs on rank 0: stats.jsonl, TensorBoard, sample grids and plots (no-ops elsewhere)."""

    def __init__(self, run_dir: Path, is_main: bool, resumed_step: int) -> None:
        self.run_dir, self.is_main, self._tb = run_dir, is_main, None
        self.stats_path = run_dir / "stats.jsonl"
        if is_main and resumed_step and self.stats_path.is_file():
            # rows past the checkpoint will be written again, identically, by the resumed run
            kept = [r for r in read_stats(self.stats_path) if r["step"] <= resumed_step]
            self.stats_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def _writer(self) -> Any:
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when first needed

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        return self._tb

    def stats(self, row: dict[str, float]) -> None:
        """Append one row to stats.jsonl and TensorBoard."""
        if not self.is_main:
            return
        with self.stats_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key not in ("step", "epoch"):
                self._writer().add_scalar(f"train/{key}", value, row["step"])

    def samples(self, G: Generator, z: torch.Tensor, y: torch.Tensor, step: int, num_cols: int) -> None:
        """Fixed-noise grid, one row per class, into samples/ and TensorBoard; plots redrawn."""
        if not self.is_main:
            return
        was_training = G.training
        images = generate(G.eval(), z, y)
        G.train(was_training)
        save_grid(images, self.run_dir / "samples" / f"step-{step:08d}.png", nrow=num_cols)
        self._writer().add_image("samples", torch.from_numpy(make_grid(images, num_cols)), step, dataformats="HWC")
        write_plots(self.stats_path, self.run_dir / "plots")

    def close(self) -> None:
        """Flush TensorBoard and draw the final plots."""
        if self.is_main:
            write_plots(self.stats_path, self.run_dir / "plots")
            if self._tb is not None:
                self._tb.close()


def load_train_data(config: TrainConfig, info: dist_utils.DistInfo) -> ImageDataset:
    """The training split; under torchrun rank 0 downloads first so ranks never race on one file."""
    kwargs = dict(split="train", image_size=config.image_size, num_workers=config.num_workers, seed=config.seed)
    if info.distributed and config.download:
        if info.is_main:
            load_dataset(config.dataset, config.root_dir, download=True, **kwargs)
        dist_utils.barrier()
    return load_dataset(config.dataset, config.root_dir, download=config.download, **kwargs)


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


def _reduce_stats(acc: torch.Tensor, count: int) -> dict[str, float]:
    """Averages since the last log, over steps and ranks: the one host sync every log_every steps."""
    values = dist_utils.all_reduce_mean(acc / max(count, 1)).tolist()
    row = dict(zip(STAT_KEYS, values, strict=True))
    row["loss_D"] = row["loss_D_real"] + row["loss_D_fake"]
    return row


def make_evaluator(config: TrainConfig, dataset: ImageDataset, device: torch.device,
                   info: dist_utils.DistInfo) -> Any:
    """A function G -> metrics for --eval_every on rank 0 (None when evaluation is off or on other ranks)."""
    if config.eval_every is None or not info.is_main:
        return None
    from acgan.metrics.evaluate import parse_metrics
    from acgan.metrics.run import evaluate_generator, open_detector

    metrics = parse_metrics(config.eval_metrics)
    detector = open_detector(metrics, config.detector, device)  # fails now, not hours into the run

    def evaluate(G: Generator) -> dict[str, float]:
        return evaluate_generator(G, dataset, metrics, num_samples=config.eval_samples, detector=detector,
                                  seed=config.seed)

    return evaluate


def _evaluate(tr: Trainer, evaluate: Any, log: RunLog, save_best: Any) -> None:
    """Score G, log the numbers beside the step's stats, and keep best.pt by FID."""
    from acgan.metrics.evaluate import with_sample_count

    if evaluate is not None:
        results = evaluate(tr.G_raw)
        log.stats({"step": tr.step, **with_sample_count(results)})
        fid = results.get("fid")
        if fid is not None and math.isfinite(fid) and fid < tr.extra.get("best_fid", math.inf):
            tr.extra["best_fid"] = fid
            save_best()
    dist_utils.barrier()  # other ranks wait while rank 0 evaluates


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
    device = dist_utils.resolve_device(config.device, info)
    # signals are caught from the start: a SIGTERM during setup stops after the first step, one during the
    # final plots is simply absorbed, and the exit status is 0 either way
    with dist_utils.process_group(info, device), dist_utils.StopRequest() as stop:
        return _train(config, explicit, info, device, stop)


def _train(config: TrainConfig, explicit: frozenset[str], info: dist_utils.DistInfo, device: torch.device,
           stop: dist_utils.StopRequest) -> Path:
    """Setup, the loop, and the final checkpoint."""
    from tqdm import tqdm

    ckpt_path = resolve_resume(config.resume, config.outdir)
    state = load_checkpoint(ckpt_path) if ckpt_path else None
    if state is not None:
        config = merge_resumed_config(state["config"], config, explicit)
    elif config.resume == "auto" and info.is_main:
        print(f"--resume auto: no checkpoint under {config.outdir}, starting a new run")
    torch.manual_seed(config.seed * info.world_size + info.rank)  # per-rank noise and dropout streams
    dataset = load_train_data(config, info)
    if state is not None and tuple(state["class_names"]) != dataset.class_names:
        raise UserError(f"{ckpt_path} was trained on other classes than this {config.dataset} data")
    K, precision = dataset.num_classes, resolve_precision(config.precision, device)
    tr = build_trainer(config, K, device, info)
    if state is not None:
        restore_trainer(tr, state, info, config.seed)
    # a node that cannot see the checkpoint would silently train from scratch beside the others
    dist_utils.check_agree(tr.step, "the step to resume from (every node must see --outdir/--resume)", info)
    run_dir = prepare_run_dir(config, ckpt_path, info)
    sampler = EpochSampler(dataset, config.batch_size, device=device, seed=config.seed,
                           rank=info.rank, world_size=info.world_size)
    if state is not None:  # the saved position counts batches of the saved world size
        tr.epoch, tr.batch = dist_utils.reshard_position(tr.epoch, tr.batch, int(state.get("world_size", 1)),
                                                         info.world_size, sampler.num_batches)
    total = total_steps(config, sampler.num_batches)
    global_batch = config.batch_size * info.world_size
    if info.is_main:
        write_config_json(config, run_dir / "config.json", {
            "class_names": list(dataset.class_names), "num_images": len(dataset), "world_size": info.world_size,
            "global_batch_size": global_batch, "resolved_device": str(device), "resolved_precision": precision,
            "total_steps": total, "params_G": count_parameters(tr.G_raw), "params_D": count_parameters(tr.D_raw)})
        print(f"run {run_dir}: {len(dataset)} images, {K} classes, {device}, {precision}, "
              f"global batch {global_batch}, steps {tr.step} -> {total}")
    log = RunLog(run_dir, info.is_main, tr.step)
    z_fixed, y_fixed = (t.to(device) for t in class_grid_inputs(K, SAMPLES_PER_CLASS, config.nz, config.seed))
    if info.is_main and tr.step == 0:
        save_grid(_real_grid(dataset, SAMPLES_PER_CLASS), run_dir / "samples" / "reals.png", SAMPLES_PER_CLASS)
    amp = autocast(device, precision)
    evaluate = make_evaluator(config, dataset, device, info)

    def save() -> Path | None:
        if not info.is_main:
            return None
        if not _finite({}, tr):  # weights only, between divergence checks: never save what rollback would reload
            print(f"\nnot writing a checkpoint at step {tr.step}: the weights are not finite")
            return None
        return save_checkpoint(trainer_state(tr, config, dataset.class_names, info.world_size), run_dir,
                               tr.step, config.keep_ckpts)

    def save_best() -> None:
        state = trainer_state(tr, config, dataset.class_names, info.world_size)
        atomic_save({**state, "format_version": FORMAT_VERSION}, run_dir / "checkpoints" / "best.pt")

    acc, count = torch.zeros(len(STAT_KEYS), device=device), 0
    t_last, step_last = time.perf_counter(), tr.step
    stopped = False
    with tqdm(total=total, initial=tr.step, disable=not info.is_main, dynamic_ncols=True, unit="step") as pbar:
        while tr.step < total and not stopped:
            for x_real, y_real in sampler.epoch(tr.epoch, start=tr.batch):
                stats = train_step(tr, x_real, y_real, config.nz, K, amp)
                acc += torch.stack([stats[k] for k in STAT_KEYS])
                count += 1
                tr.step, tr.batch = tr.step + 1, tr.batch + 1
                if tr.batch == sampler.num_batches:
                    tr.epoch, tr.batch = tr.epoch + 1, 0
                pbar.update(1)
                last = tr.step >= total
                if tr.step % config.log_every == 0 or last:
                    row = _reduce_stats(acc, count)
                    now = time.perf_counter()
                    ips = (tr.step - step_last) * global_batch / (now - t_last)
                    if not _finite(row, tr):
                        _recover(tr, config, run_dir, info)
                        acc.zero_()
                        count, t_last, step_last = 0, time.perf_counter(), tr.step
                        pbar.n = tr.step
                        break  # re-enter the epoch at the restored position
                    log.stats({"step": tr.step, "epoch": tr.epoch, **row, "images_per_s": ips})
                    pbar.set_postfix(epoch=tr.epoch, loss_D=f"{row['loss_D']:.3f}",
                                     loss_G=f"{row['loss_G']:.3f}", img_s=f"{ips:.0f}", refresh=False)
                    acc.zero_()
                    count, t_last, step_last = 0, now, tr.step
                    if info.distributed:
                        stopped = dist_utils.any_rank(stop.requested, device)
                if tr.step % config.sample_every == 0 or last:
                    log.samples(tr.G_raw, z_fixed, y_fixed, tr.step, SAMPLES_PER_CLASS)
                if config.eval_every and (tr.step % config.eval_every == 0 or last):
                    _evaluate(tr, evaluate, log, save_best)
                if not info.distributed:
                    stopped = stop.requested
                if tr.step % config.ckpt_every == 0 or last or stopped:
                    save()
                if last or stopped:
                    break
    log.close()
    if info.is_main:
        verb = "stopped" if stopped else "finished"
        print(f"{verb} at step {tr.step} (epoch {tr.epoch}); outputs in {run_dir}")
    return run_dir


def _real_grid(dataset: ImageDataset, per_class: int) -> torch.Tensor:
    """uint8 grid of real images, one row per class, to set beside the samples (short classes padded white)."""
    S, rows = dataset.image_size, []
    for c in range(dataset.num_classes):
        idx = (dataset.labels == c).nonzero().flatten()[:per_class]
        pad = torch.full((per_class - len(idx), 3, S, S), 255, dtype=torch.uint8)
        rows.append(torch.cat([dataset.images[idx], pad]))
    return torch.cat(rows)  # (K * per_class, 3, S, S)
