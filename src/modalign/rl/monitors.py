"""Reward-hacking monitors for online RL, and the alarms that stop a run on them.

RL against a learned reward games it (Gao et al. 2023, "Scaling laws for reward model
overoptimization"): the proxy reward keeps rising while the true one falls. Every iteration
the monitor reads what the step already computed (the proxy scores, answer lengths, the
sampled tokens' log-probs, the KL) plus one batched pass of a held-out reward, and logs:

- `monitor/proxy_gap`: how far the proxy's gain since the start runs ahead of the held-out
  reward's, both in units of their start spread (`proxy_gap`);
- `monitor/length_corr`: Pearson correlation of the proxy score with answer length (`pearson`);
- `monitor/entropy`: the policy's entropy per answer token, estimated from the sampled
  tokens' log-probs (`sampled_entropy`);
- `monitor/kl_spike`: this iteration's KL over the median of the previous ones (`kl_spike`);
- `monitor/heldout_corr`: Pearson correlation of the proxy and held-out scores over the
  iteration's answers (`pearson`);
- `monitor/length`, `monitor/length_drift`: the mean answer length and its relative change since
  the start (`length_drift`);
- `monitor/disagreement`: spread of the standardised proxy and held-out scores per answer,
  relative to its start (`ensemble_disagreement`);
- `monitor/unfinished`: share of answers that hit max_new_tokens without an end (`unfinished_share`);
- with `heldout_reward=gold` on ShapesWorld: the rollout captions' gold coverage and
  hallucination rate (`monitor/gold_coverage`, `monitor/gold_hallucination`).

Alarms (`alarms=proxy_gap,length_corr`) compare each monitor, averaged over the last `window`
iterations, with its threshold; the rules, and how the defaults were chosen, are in
docs/monitors.md. Every process computes the same values from the gathered batch, so all stop
at the same iteration.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from modalign.config import ConfigError, field_doc

ALARMS = ("proxy_gap", "length_corr", "kl_spike", "entropy_drop", "unfinished", "disagreement",
          "heldout_corr", "length_drift", "length_corr_rise")
# monitors whose start value is their mean over the baseline iterations (what length_drift, entropy_drop,
# length_corr_rise compare with)
STARTED = ("entropy", "length", "length_corr")
GOLD = "gold"  # heldout_reward keyword: the ShapesWorld gold scorers


@dataclass
class MonitorConfig:
    """Reward-hacking monitors logged every RL iteration and the alarms that stop a run (docs/monitors.md)."""

    enabled: bool = field_doc(True, "Compute and log the monitors (false: none, the run is as without them).")
    heldout_reward: str = field_doc("", "Held-out reward(s) the policy is not trained on, comma-separated: gold "
                                        "(ShapesWorld's gold scorers), a reward-model folder (e.g. an ensemble "
                                        "member trained on other data), rule:<name> or py:<file.py>:<fn> ('': "
                                        "none, so no proxy_gap or disagreement).")
    alarms: str = field_doc("", "Comma-separated alarms that stop the run when they fire: " + ", ".join(ALARMS)
                                + " ('': none; the monitors are still logged).")
    window: int = field_doc(5, "Iterations each alarm averages over, and the KL spike's median looks back over.")
    baseline_iterations: int = field_doc(3, "First iterations whose answers set the start mean and spread of the "
                                            "rewards, the start entropy and disagreement; alarms wait for them.")
    proxy_gap: float = field_doc(0.3, "proxy_gap fires when the proxy's gain since the start exceeds the held-out "
                                      "reward's by this many start standard deviations.")
    length_corr: float = field_doc(0.85, "length_corr fires when |correlation of the proxy score with answer "
                                        "length| exceeds this.")
    kl_spike: float = field_doc(20.0, "kl_spike fires when one iteration's KL exceeds this many times the median "
                                      "KL of the previous `window` iterations (that median floored at 0.05).")
    entropy_drop: float = field_doc(0.1, "entropy_drop fires when the policy's entropy falls below this share of "
                                         "its start value.")
    unfinished: float = field_doc(0.3, "unfinished fires when this share of answers hit max_new_tokens without "
                                       "an end.")
    disagreement: float = field_doc(2.0, "disagreement fires when the proxy and held-out rewards disagree on the "
                                         "current answers this many times more than at the start.")
    heldout_corr: float = field_doc(-0.1, "heldout_corr fires when the correlation of the proxy with the held-out "
                                         "reward over the iteration's answers falls below this.")
    length_drift: float = field_doc(0.15, "length_drift fires when the mean answer length moved more than this "
                                          "share of its start value (either way).")
    length_corr_rise: float = field_doc(0.6, "length_corr_rise fires when the correlation of the proxy with answer "
                                             "length rose this much above its start value.")


class Alarm(NamedTuple):
    """A fired alarm: its name, the iteration it fired at, the value and threshold, and why."""

    name: str
    step: int
    value: float
    threshold: float
    reason: str


# ---- pure functions: one monitor each, on one iteration's tensors ----

def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two (N,) vectors; 0 when either is constant (no linear relation to see)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def sampled_entropy(logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Entropy per answer token, estimated as the mean of -log pi(token) over the sampled tokens.

    logprobs: (N, T) of the sampled tokens under the sampling policy; mask: (N, T). The sampled
    tokens are drawn from pi, so -log pi(a) averages to H(pi) (no extra pass over the vocabulary).
    """
    mask = mask.double()
    return float(-(logprobs.double() * mask).sum() / mask.sum().clamp(min=1))


def kl_spike(kl: float, previous: Sequence[float], floor: float = 0.05) -> float:
    """This iteration's KL over the median KL of `previous` iterations (floored at `floor`, so that the
    near-zero KL of the first iterations does not turn noise into a spike); 0 with no history."""
    if not previous:
        return 0.0
    return float(kl) / max(floor, statistics.median(previous))


def unfinished_share(finished: torch.Tensor) -> float:
    """Share of answers (N,) that never produced an end-of-turn token."""
    return float(1.0 - finished.double().mean())


def length_drift(lengths: torch.Tensor, start_length: float) -> float:
    """Relative change of the mean answer length (N,) from the start's mean length: 0.2 is 20% longer."""
    return float(lengths.double().mean()) / max(start_length, 1e-6) - 1.0


def standardized(values: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(values - mean) / std, the start's spread as the unit (std floored at 1e-6)."""
    return (values.double() - mean) / max(std, 1e-6)


def proxy_gap(proxy: torch.Tensor, heldout: torch.Tensor, proxy_start: tuple[float, float],
              heldout_start: tuple[float, float]) -> float:
    """Gain of the mean proxy score minus gain of the mean held-out score, each in start standard deviations.

    proxy, heldout: (N,) scores of the same answers; *_start: (mean, std) over the start's answers.
    Near 0 while both rise together (or neither moves); positive when the proxy climbs away from
    the held-out reward: the policy found what the proxy pays for and the held-out reward does not.
    """
    return float(standardized(proxy, *proxy_start).mean() - standardized(heldout, *heldout_start).mean())


def ensemble_disagreement(scores: torch.Tensor, starts: Sequence[tuple[float, float]]) -> float:
    """Mean over answers of the standard deviation across K reward members of their standardised scores.

    scores: (K, N), K >= 2 members' scores of the same N answers; starts: K (mean, std). Members
    trained on different data agree where the answers look like their training data; where the
    policy has moved off it they disagree (Lakshminarayanan et al. 2017; Coste et al. 2024,
    "Reward model ensembles help mitigate overoptimization").
    """
    z = torch.stack([standardized(s, *start) for s, start in zip(scores, starts)])  # (K, N)
    return float(z.std(0).mean())


def shapes_gold_stats(examples: Sequence, answers: Sequence[str]) -> dict[str, float]:
    """Gold coverage and hallucination rate (CHAIR) of the captions among the answers; {} without captions."""
    from modalign.data.shapes.scorers import answer_facts

    facts = [answer_facts(e, a) for e, a in zip(examples, answers) if e.meta.get("task") == "caption"]
    if not facts:
        return {}
    return {"gold_coverage": sum(f["covered"] for f in facts) / max(1, sum(f["true_facts"] for f in facts)),
            "gold_hallucination": sum(f["hallucinated"] for f in facts) / max(1, sum(f["mentions"] for f in facts))}


# ---- the monitor of one run ----

class IterationBatch(NamedTuple):
    """What one RL iteration already computed, for the monitors (this process's rows).

    examples, answers: N each; scores: (N,) proxy rewards as trained on; lengths: (N,) answer tokens;
    finished: (N,) bool; entropy: `sampled_entropy` of the rollout and kl: the KL to the reference
    per answer, both already averaged over processes.
    """

    examples: Sequence
    answers: Sequence[str]
    scores: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor
    entropy: float
    kl: float


class Monitor:
    """Computes the monitors of each iteration, keeps their recent values and decides the alarms.

    `heldout`: (name, reward source) pairs scored on the answers (batched, no gradient); `media`
    the MediaStore a reward-model source reads the media from; `dist` the process group.
    """

    def __init__(self, cfg: MonitorConfig, heldout: Sequence[tuple[str, object]] = (), media=None, dist=None) -> None:
        from modalign.dist import processes

        self.cfg, self.heldout, self.media, self.dist = cfg, list(heldout), media, dist or processes()
        self.alarms = parse_alarms(cfg.alarms)
        self.recent: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=cfg.window))  # monitor -> its last `window` values
        self.kls: collections.deque = collections.deque(maxlen=cfg.window)
        self.start_rows: list[dict] = []  # the baseline iterations' gathered rows
        self.start: dict | None = None
        self.fired: Alarm | None = None

    def place(self, device: torch.device) -> None:
        """Move the held-out reward models to `device` (the policy's), as the run's own reward is."""
        from modalign.rl.rewards import place_reward_models

        for _, source in self.heldout:
            place_reward_models(source, device)

    def observe(self, step: int, batch: IterationBatch) -> dict[str, float]:
        """The iteration's monitor metrics (to log); sets `fired` when an alarm's rule holds."""
        if not self.cfg.enabled:
            return {}
        rows = self._gather(batch)
        metrics = {"entropy": rows["entropy"], "unfinished": unfinished_share(rows["finished"]),
                   "length_corr": pearson(rows["scores"], rows["lengths"]),
                   "kl_spike": kl_spike(batch.kl, list(self.kls)), "length": float(rows["lengths"].mean())}
        metrics |= {f"heldout/{_short_name(name, i)}": float(s.mean())
                    for i, (name, s) in enumerate(zip(self._names(), rows["heldout"]))}
        metrics |= rows["gold"]
        if self.start is None:
            self.start_rows.append(rows | {"length_corr": metrics["length_corr"]})
            if len(self.start_rows) >= self.cfg.baseline_iterations:
                self.start = _start_stats(self.start_rows, self.heldout_count)
        if self.start is not None:
            metrics["length_drift"] = length_drift(rows["lengths"], self.start["length"])
        if self.start is not None and self.heldout_count:
            metrics |= self._against_start(rows)
        self.kls.append(float(batch.kl))
        for key, value in metrics.items():
            self.recent[key].append(value)
        if self.start is not None and self.fired is None:
            self.fired = self._check(step)
        return {f"monitor/{k}": v for k, v in metrics.items()}

    @property
    def heldout_count(self) -> int:
        return len(self.heldout)

    def _names(self) -> list[str]:
        return [name for name, _ in self.heldout]

    def _gather(self, batch: IterationBatch) -> dict:
        """Every process's rows (scores, lengths, held-out scores...) on every process."""
        from modalign.rl.rewards import score_texts

        heldout = [score_texts(source, batch.examples, batch.answers, self.media).double().tolist()
                   for _, source in self.heldout]
        gold_wanted = GOLD in self._names()
        mine = {"scores": batch.scores.double().tolist(), "lengths": batch.lengths.double().tolist(),
                "finished": batch.finished.tolist(), "heldout": heldout,
                "gold_examples": [(e, a) for e, a in zip(batch.examples, batch.answers)] if gold_wanted else []}
        parts = self.dist.gather_objects(mine)
        pairs = [pair for p in parts for pair in p["gold_examples"]]
        return {
            "scores": torch.tensor([v for p in parts for v in p["scores"]], dtype=torch.float64),
            "lengths": torch.tensor([v for p in parts for v in p["lengths"]], dtype=torch.float64),
            "finished": torch.tensor([v for p in parts for v in p["finished"]], dtype=torch.bool),
            "heldout": [torch.tensor([v for p in parts for v in p["heldout"][k]], dtype=torch.float64)
                        for k in range(self.heldout_count)],
            "entropy": float(batch.entropy),
            "gold": shapes_gold_stats([e for e, _ in pairs], [a for _, a in pairs]) if pairs else {},
        }

    def _against_start(self, rows: dict) -> dict[str, float]:
        """The monitors that need the start: proxy gap (mean over held-out members) and disagreement."""
        gaps = [proxy_gap(rows["scores"], h, self.start["proxy"], start)
                for h, start in zip(rows["heldout"], self.start["heldout"])]
        members = torch.stack([rows["scores"], *rows["heldout"]])  # (K, N)
        spread = ensemble_disagreement(members, [self.start["proxy"], *self.start["heldout"]])
        agreement = [pearson(rows["scores"], h) for h in rows["heldout"]]  # per answer, so no prompt-mix shift
        return {"proxy_gap": sum(gaps) / len(gaps), "heldout_corr": sum(agreement) / len(agreement),
                "disagreement": spread / max(1e-6, self.start["disagreement"])}

    def _check(self, step: int) -> Alarm | None:
        """The first alarm (in ALARMS order) whose rule holds over the last `window` iterations."""
        return check_alarms(self.alarms, self.recent, self.start, self.cfg, step)

    def stop(self, steps: int) -> bool:
        """True once an alarm fired (the recipe then stops, as at its KL budget); says why on the console."""
        if self.fired is None:
            return False
        from modalign.ui import console

        console.print(f"[yellow]{self.fired.reason}: stopping at step {self.fired.step}/{steps} "
                      "(summary.json 'alarm'; docs/monitors.md)")
        return True

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so a resumed run compares with the same start and recent values."""
        return {"recent": {k: list(v) for k, v in self.recent.items()}, "kls": list(self.kls), "start": self.start,
                "start_rows": self.start_rows, "fired": self.fired}

    def load_state_dict(self, state: dict) -> None:
        for key, values in state["recent"].items():
            self.recent[key].extend(values)
        self.kls.extend(state["kls"])
        self.start, self.start_rows = state["start"], state["start_rows"]
        self.fired = Alarm(*state["fired"]) if state["fired"] else None


# ---- the alarm rules: pure functions of the monitors' recent values (a run and a replay of its log agree) ----

def alarm_value(name: str, values: Sequence[float], start: dict) -> float:
    """What alarm `name` compares with its threshold, from its monitor's last `window` values.

    kl_spike: the last value; entropy_drop: the mean entropy over the start's; length_corr: |mean|;
    length_drift: |mean| (longer or shorter); length_corr_rise: the mean minus the start's
    length_corr; any other: the mean. `start` holds the baseline iterations' means (STARTED).
    """
    if name == "kl_spike":
        return values[-1]
    mean = sum(values) / len(values)
    if name in ("length_corr", "length_drift"):
        return abs(mean)
    if name == "entropy_drop":
        return mean / max(1e-9, start["entropy"])
    if name == "length_corr_rise":
        return mean - start["length_corr"]
    return mean


def alarm_holds(name: str, value: float, threshold: float) -> bool:
    """The rule: entropy_drop and heldout_corr fire below their threshold, every other alarm above it."""
    return value < threshold if name in ("entropy_drop", "heldout_corr") else value > threshold


def monitor_key(alarm: str) -> str:
    """The monitor an alarm reads (entropy_drop reads entropy, length_corr_rise length_corr)."""
    return {"entropy_drop": "entropy", "length_corr_rise": "length_corr"}.get(alarm, alarm)


def check_alarms(alarms: Sequence[str], recent: dict, start: dict, cfg: MonitorConfig, step: int) -> Alarm | None:
    """The first of `alarms` whose rule holds on `recent` (monitor -> its last values), needing a full window
    of values, so that one noisy iteration cannot fire it; None when none holds."""
    for name in alarms:
        values = list(recent.get(monitor_key(name), ()))[-cfg.window:]
        if len(values) < cfg.window:
            continue
        value, threshold = alarm_value(name, values, start), getattr(cfg, name)
        if alarm_holds(name, value, threshold):
            return Alarm(name, step, value, threshold, _reason(name, value, threshold, cfg.window))
    return None


def alarm_trace(series: Sequence[dict], cfg: MonitorConfig, name: str) -> list[tuple[int, float]]:
    """(step, value) of alarm `name`'s rule at every iteration the live `Monitor` checks it.

    series: per iteration, {"step", monitor name -> value} as logged (metrics.jsonl's `monitor/...`
    keys without the prefix; a monitor missing from an iteration was not logged there). The start
    is set at iteration `baseline_iterations` from the STARTED monitors' means, as in a run.
    """
    recent: dict = collections.defaultdict(lambda: collections.deque(maxlen=cfg.window))
    start, trace = None, []
    for i, row in enumerate(series):
        for key, value in row.items():
            if key != "step" and value is not None:
                recent[key].append(value)
        if i + 1 == cfg.baseline_iterations:
            first = series[:i + 1]
            start = {k: sum(r[k] for r in first) / len(first) for k in STARTED
                     if all(r.get(k) is not None for r in first)}
        values = list(recent.get(monitor_key(name), ()))
        if start is not None and len(values) >= cfg.window:
            trace.append((row["step"], alarm_value(name, values[-cfg.window:], start)))
    return trace


def replay_alarms(series: Sequence[dict], cfg: MonitorConfig,
                  alarms: Sequence[str] = ALARMS) -> dict[str, Alarm | None]:
    """Each alarm's first firing on a logged run (`alarm_trace`), as `Monitor` would have fired it with that
    alarm alone switched on (so one firing does not hide another's iteration); None: silent."""
    fired = {}
    for name in alarms:
        threshold = getattr(cfg, name)
        hits = [(step, value) for step, value in alarm_trace(series, cfg, name) if alarm_holds(name, value, threshold)]
        fired[name] = (Alarm(name, hits[0][0], hits[0][1], threshold, _reason(name, hits[0][1], threshold, cfg.window))
                       if hits else None)
    return fired


def _start_stats(rows: list[dict], heldout_count: int) -> dict:
    """Mean and std of the proxy and each held-out reward over the baseline iterations' answers, the means of
    the STARTED monitors over those iterations, and the members' disagreement on those answers (the unit
    of the `disagreement` monitor)."""
    proxy = torch.cat([r["scores"] for r in rows])
    heldout = [torch.cat([r["heldout"][k] for r in rows]) for k in range(heldout_count)]
    moments = lambda t: (float(t.mean()), float(t.std()) if t.numel() > 1 else 1.0)  # noqa: E731
    start = {"proxy": moments(proxy), "heldout": [moments(h) for h in heldout],
             "entropy": sum(r["entropy"] for r in rows) / len(rows), "disagreement": 1.0,
             "length": sum(float(r["lengths"].mean()) for r in rows) / len(rows),
             "length_corr": sum(r["length_corr"] for r in rows) / len(rows)}
    if heldout_count:
        start["disagreement"] = ensemble_disagreement(torch.stack([proxy, *heldout]),
                                                      [start["proxy"], *start["heldout"]])
    return start


def _short_name(spec: str, index: int) -> str:
    """A metric name for a held-out reward: gold, rule names as they are, anything else heldout<i>."""
    return spec if spec == GOLD or spec.startswith("rule:") else f"heldout{index + 1}"


def _reason(name: str, value: float, threshold: float, window: int) -> str:
    what = {
        "proxy_gap": f"the proxy reward's gain ran {value:.2f} start-std ahead of the held-out reward's "
                     f"(mean of the last {window} iterations > {threshold})",
        "length_corr": f"|correlation of the reward with answer length| {value:.2f} > {threshold} "
                       f"(mean of the last {window} iterations)",
        "kl_spike": f"the KL to the reference jumped to {value:.1f}x its recent median (> {threshold}x)",
        "entropy_drop": f"the policy's entropy fell to {value:.2f} of its start (< {threshold})",
        "unfinished": f"{value:.0%} of answers never ended (> {threshold:.0%}, mean of the last {window} iterations)",
        "disagreement": f"the held-out and proxy rewards disagree {value:.1f}x as much as at the start "
                        f"(> {threshold}x, mean of the last {window} iterations)",
        "heldout_corr": f"the proxy's correlation with the held-out reward over the answers fell to {value:.2f} "
                        f"(< {threshold}, mean of the last {window} iterations)",
        "length_drift": f"the mean answer length moved {value:.0%} from its start (> {threshold:.0%}, mean of the "
                        f"last {window} iterations)",
        "length_corr_rise": f"the reward's correlation with answer length rose {value:.2f} above its start "
                            f"(> {threshold}, mean of the last {window} iterations)",
    }[name]
    return f"alarm {name}: {what}"


def parse_alarms(spec: str) -> list[str]:
    """The alarm names of `alarms=a,b` in ALARMS order; an unknown name is a ConfigError naming the key."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALARMS]
    if unknown:
        raise ConfigError(f"monitors.alarms: unknown alarm {unknown[0]!r} (choose from {', '.join(ALARMS)})")
    return [n for n in ALARMS if n in names]


def build_monitor(cfg: MonitorConfig, prompts: Sequence, media, dist=None) -> Monitor:
    """The run's monitor: checks `alarms` and `heldout_reward` (before any work) and loads the held-out rewards.

    Raises a ConfigError naming `monitors.heldout_reward` or `monitors.alarms` for bad settings, and
    for alarms that need a held-out reward when there is none.
    """
    from modalign.rl.rewards import FunctionSource, check_reward, reward_source_from, shapes_gold

    alarms = parse_alarms(cfg.alarms)
    if not cfg.enabled:
        if alarms:
            raise ConfigError(f"monitors.alarms={cfg.alarms!r} needs monitors.enabled=true")
        return Monitor(cfg, (), media, dist)
    specs = [s.strip() for s in cfg.heldout_reward.split(",") if s.strip()]
    needs_heldout = [a for a in alarms if a in ("proxy_gap", "disagreement", "heldout_corr")]
    if needs_heldout and not specs:
        raise ConfigError(f"monitors.alarms has {needs_heldout[0]}, which compares the reward with a held-out "
                          "one: set monitors.heldout_reward (gold on ShapesWorld, or a reward-model folder)")
    for key, least in (("window", 1), ("baseline_iterations", 1)):
        if getattr(cfg, key) < least:
            raise ConfigError(f"monitors.{key}={getattr(cfg, key)}: it must be at least {least}")
    heldout = []
    for spec in specs:
        name = "rule:shapes_gold" if spec == GOLD else spec
        check_reward(name, prompts, key="monitors.heldout_reward")
        source = FunctionSource(shapes_gold) if spec == GOLD else reward_source_from(spec)
        heldout.append((spec, source))
    return Monitor(cfg, heldout, media, dist)


def alarm_summary(alarm: Alarm | None) -> dict:
    """The summary.json entry of a fired alarm ({} when none fired)."""
    return {"alarm": alarm._asdict()} if alarm else {}
