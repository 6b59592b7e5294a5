"""HalfCheetah-Direction and HalfCheetah-Velocity on gymnasium's half_cheetah.xml MuJoCo model.

Default semantics (the most used PyTorch reproduction, see setups.md):
- frame_skip 5, dt 0.05; forward velocity = (x_after - x_before) / dt of the root slider.
- The policy's raw output is divided by `action_scale` (10) and clipped to the actuator
  range [-1, 1]; that *applied control* is what MuJoCo gets and what the control cost
  `ctrl_cost_weight * sum(control^2)` (0.05) is charged on. The action space is
  Box(-action_scale, action_scale), the raw outputs whose applied control spans [-1, 1];
  `action_scale=1.0` makes the raw output the control.
- Direction: task {"direction": d}, d = -1 or +1 with probability 1/2, reward = d * velocity
  - control cost. Velocity: task {"velocity": v}, v ~ U(velocity_range) (default [0, 2]),
  reward = -|velocity - v| - control cost.
- Never terminates; the single env truncates at `horizon` steps itself (no TimeLimit needed).
- Observation (20-d): qpos[1:] (8), qvel (9), torso body position xpos (3); `obs_dim=17`
  drops the torso position (gymnasium HalfCheetah-v5's observation). As in gym's
  `get_body_com` after `mj_step`, xpos is MuJoCo's value from the last substep's forward
  pass (one substep, 0.01 s, behind qpos), except right after a reset, where it is current.
- Initial state as HalfCheetah-v5: qpos0 + U(-0.1, 0.1), qvel 0.1 * N(0, 1), drawn in that
  order, so a seeded reset of the single env starts where HalfCheetah-v5 does.

Finn et al.'s rllab variant is reachable by settings: `frame_skip=1` (dt 0.01), `horizon=200`,
`action_scale=1.0` and `velocity="com"`. The latter rewards the x-velocity of the whole body's
centre of mass (rllab's `get_body_comvel("torso")`, the torso's subtree) at the state after the
step; as rllab, it recomputes the kinematics there, so the torso position in the observation is
current rather than one substep behind. Two more rllab details are settings of their own:
`obs_position="com"` ends the observation with rllab's `get_body_com("torso")`, which there is
the torso subtree's (the whole body's) centre of mass `subtree_com`, not the torso body's
position (gym's `get_body_com`, our default); `reset_noise="rllab"` draws rllab's initial state,
qpos0 + 0.01 * N(0, 1) and 0.1 * N(0, 1), instead of HalfCheetah-v5's. The model stays gymnasium's
(rllab's half_cheetah.xml has the same bodies, joints, actuators and options).

The single envs (`HalfCheetahDirEnv`, `HalfCheetahVelEnv`) define the semantics; the batched
engines (`HalfCheetahDirBatch`, `HalfCheetahVelBatch`) step every simulation of a meta-batch
in one `mujoco.batch.Batch` and match them bit for bit. Both take their maths from
`_Cheetah`, so they cannot drift apart.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
from pathlib import Path

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces
from mujoco.batch import Batch

from metarl.errors import UserError

# gymnasium.envs.mujoco itself imports the renderer (and imageio); only its asset is needed
XML_PATH = Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / "half_cheetah.xml"
FRAME_SKIP = 5  # the default; the `frame_skip` setting changes it
RESET_NOISE = 0.1
DEFAULT_VELOCITY_RANGE = (0.0, 2.0)
KINDS = ("direction", "velocity")  # also the task dicts' keys
VELOCITIES = ("root", "com")  # root slider finite difference (default), centre of mass (rllab)
POSITIONS = ("torso", "com")  # the observation's last 3 entries: torso body (default), centre of mass (rllab)
RESETS = ("gymnasium", "rllab")  # initial-state noise: HalfCheetah-v5's (default) or rllab's MujocoEnv's
RLLAB_QPOS_NOISE = 0.01  # rllab: qpos0 + 0.01 * N(0, 1); qvel 0.1 * N(0, 1) as HalfCheetah-v5


@functools.cache
def _model() -> mujoco.MjModel:
    """The compiled model, shared read-only: compiling it per env costs time.

    MuJoCo 4 deprecates the XML's `settotalmass` (a warning at each compile, removal to come), so the
    total mass is set on the compiled model instead, and the two statistics the compiler derives from the
    masses are redone (the solver scales its tolerance by `meaninertia`): every model array and statistic
    comes out equal to gymnasium's compile.
    """
    xml = XML_PATH.read_text()
    total = re.search(r'\s+settotalmass="([^"]+)"', xml)
    if total is None:
        return mujoco.MjModel.from_xml_string(xml)
    model = mujoco.MjModel.from_xml_string(xml.replace(total.group(0), ""))
    mujoco.mj_setTotalmass(model, float(total.group(1)))
    data = mujoco.MjData(model)
    mujoco.mj_setConst(model, data)
    mujoco.mj_resetData(model, data)
    mujoco.mj_forward(model, data)  # the mass matrix at qpos0
    inertia = np.zeros((model.nv, model.nv))
    mujoco.mj_fullM(model, data, inertia)
    trace, mass = 0.0, 0.0
    for i in range(model.nv):  # summed in the compiler's order, for equal bits
        trace += inertia[i, i]
    for body in range(1, model.nbody):  # body 0 is the world
        mass += model.body_mass[body]
    model.stat.meaninertia = trace / model.nv
    model.stat.meanmass = mass / (model.nbody - 1)
    return model


def sample_tasks(
    kind: str, n: int, rng: np.random.Generator, velocity_range: tuple[float, float] = DEFAULT_VELOCITY_RANGE
) -> list[dict]:
    """Draw `n` tasks of family `kind`; shared by the single envs and the engines."""
    if kind == "direction":
        return [{"direction": float(d)} for d in rng.choice((-1.0, 1.0), size=n)]
    if kind == "velocity":
        low, high = velocity_range
        return [{"velocity": float(v)} for v in rng.uniform(low, high, size=n)]
    raise UserError(f"unknown HalfCheetah task family {kind!r}; choose one of {KINDS}")


class _Cheetah:
    """Settings, model and the array maths of one task family.

    Every function works on the last axis, so the single env (one simulation) and the
    engine (B simulations) run the very same numpy operations and agree bit for bit.
    """

    def __init__(
        self,
        kind: str,
        ctrl_cost_weight: float,
        obs_dim: int,
        action_scale: float,
        horizon: int,
        velocity_range: tuple[float, float] | None,
        frame_skip: int = FRAME_SKIP,
        velocity: str = "root",
        obs_position: str = "torso",
        reset_noise: str = "gymnasium",
    ) -> None:
        if obs_dim not in (17, 20):
            raise UserError(f"HalfCheetah obs_dim must be 20 (with the torso position) or 17, not {obs_dim}")
        if action_scale <= 0:
            raise UserError(f"HalfCheetah action_scale must be positive, not {action_scale}")
        if horizon < 1:
            raise UserError(f"HalfCheetah horizon must be at least 1, not {horizon}")
        if isinstance(frame_skip, bool) or not isinstance(frame_skip, int) or frame_skip < 1:
            raise UserError(f"HalfCheetah frame_skip must be a positive integer, not {frame_skip!r}")
        if velocity not in VELOCITIES:
            raise UserError(f"HalfCheetah velocity must be one of {VELOCITIES}, not {velocity!r}")
        if obs_position not in POSITIONS:
            raise UserError(f"HalfCheetah obs_position must be one of {POSITIONS}, not {obs_position!r}")
        if obs_position != "torso" and obs_dim != 20:
            raise UserError("HalfCheetah obs_position needs obs_dim 20: the 17-d observation has no position")
        if reset_noise not in RESETS:
            raise UserError(f"HalfCheetah reset_noise must be one of {RESETS}, not {reset_noise!r}")
        if velocity_range is not None and kind != "velocity":
            raise UserError("velocity_range is a setting of HalfCheetah-Velocity only")
        velocity_range = tuple(velocity_range or DEFAULT_VELOCITY_RANGE)
        numbers = all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in velocity_range
        )
        if len(velocity_range) != 2 or not numbers or velocity_range[0] > velocity_range[1]:
            raise UserError(
                f"velocity_range must be two finite numbers (low, high) with low <= high, not {velocity_range}"
            )
        self.kind = kind
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self.obs_dim = obs_dim
        self.action_scale = float(action_scale)
        self.horizon = horizon
        self.velocity_range = velocity_range
        self.model = _model()
        self.torso = self.model.body("torso").id
        self.frame_skip = frame_skip
        self.velocity = velocity
        self.obs_position = obs_position
        self.reset_noise = reset_noise
        self.dt = self.model.opt.timestep * frame_skip
        self.act_dim = self.model.nu
        # bodies of the torso's subtree (the whole cheetah) and their share of its mass
        subtree = [b for b in range(self.model.nbody) if self.model.body_rootid[b] == self.torso]
        self._subtree = np.array(subtree)
        mass = self.model.body_mass[self._subtree]
        self._mass_share = mass / mass.sum()

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict]:
        return sample_tasks(self.kind, n, rng, self.velocity_range)

    def goals(self, tasks: list[dict]) -> np.ndarray:
        """The task parameter (direction or target velocity) of each task, (n,)."""
        try:
            return np.array([float(task[self.kind]) for task in tasks], dtype=np.float64)
        except KeyError as err:
            raise UserError(f"a HalfCheetah-{self.kind} task needs the key {err}") from None

    def initial_state(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(qpos, qvel), (n, nq) and (n, nv): HalfCheetah-v5's (or rllab's) reset noise, in its order of draws."""
        if self.reset_noise == "rllab":
            qpos = self.model.qpos0 + RLLAB_QPOS_NOISE * rng.standard_normal((n, self.model.nq))
        else:
            qpos = self.model.qpos0 + rng.uniform(-RESET_NOISE, RESET_NOISE, size=(n, self.model.nq))
        qvel = RESET_NOISE * rng.standard_normal((n, self.model.nv))  # the model's initial qvel is 0
        return qpos, qvel

    def control(self, actions: np.ndarray) -> np.ndarray:
        """Raw policy outputs -> applied control: divide by action_scale, clip to [-1, 1]."""
        return np.clip(np.asarray(actions, dtype=np.float64) / self.action_scale, -1.0, 1.0)

    def rewards(self, velocity, control: np.ndarray, goal) -> tuple:
        """(reward, run term, control cost) from forward velocity, applied control and goal."""
        run = goal * velocity if self.kind == "direction" else -np.abs(velocity - goal)
        ctrl_cost = self.ctrl_cost_weight * np.sum(np.square(control), axis=-1)
        return run - ctrl_cost, run, ctrl_cost

    def com_velocity(self, cvel: np.ndarray, xipos: np.ndarray, subtree_com: np.ndarray) -> np.ndarray:
        """x-velocity of the torso subtree's centre of mass from MuJoCo's com-based body
        velocities (..., nbody, 6): each body's linear velocity at its own centre of mass
        (as mj_objectVelocity), mass-weighted (as mj_subtreeVel, which mj_forward leaves lazy)."""
        ang, lin = cvel[..., self._subtree, :3], cvel[..., self._subtree, 3:]
        offset = xipos[..., self._subtree, :] - subtree_com[..., self.torso : self.torso + 1, :]
        v_x = lin[..., 0] + ang[..., 1] * offset[..., 2] - ang[..., 2] * offset[..., 1]
        return np.sum(v_x * self._mass_share, axis=-1)

    def observe(self, qpos: np.ndarray, qvel: np.ndarray, xpos: np.ndarray, subtree_com: np.ndarray) -> np.ndarray:
        """Observation from qpos, qvel and body positions xpos and subtree_com (..., nbody, 3)."""
        parts = [qpos[..., 1:], qvel]
        if self.obs_dim == 20:
            parts.append((subtree_com if self.obs_position == "com" else xpos)[..., self.torso, :])
        return np.concatenate(parts, axis=-1)


def _settings(arguments: dict) -> dict:
    """The `_Cheetah` settings among a front end's constructor arguments (both front ends take them all)."""
    return {name: arguments[name] for name in list(inspect.signature(_Cheetah).parameters)[1:]}


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count: under taskset or a
    container's cpuset, more MuJoCo threads than cores contend with each other)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere, every core
    return len(affinity(0)) if affinity else os.cpu_count() or 1


class _HalfCheetahEnv(gymnasium.Env):
    """Single-environment reference implementation with the task API.

    The task stays until `reset_task` (or `reset(options={"task": ...})`) changes it; the
    first reset draws one if none was set. `reset(options={"qpos": ..., "qvel": ...})`
    starts from an exact state instead of the random one.
    """

    metadata = {"render_modes": [], "render_fps": 20}  # 1 / dt
    kind: str

    def __init__(
        self,
        ctrl_cost_weight: float = 0.05,
        obs_dim: int = 20,
        action_scale: float = 10.0,
        horizon: int = 100,
        velocity_range: tuple[float, float] | None = None,
        frame_skip: int = FRAME_SKIP,
        velocity: str = "root",
        obs_position: str = "torso",
        reset_noise: str = "gymnasium",
    ) -> None:
        self._cheetah = _Cheetah(self.kind, **_settings(locals()))
        self.model = self._cheetah.model
        self.data = mujoco.MjData(self.model)
        self.horizon = horizon
        self.dt = self._cheetah.dt
        bound = self._cheetah.action_scale
        self.action_space = spaces.Box(-bound, bound, shape=(self._cheetah.act_dim,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float64)
        self._task: dict | None = None
        self._goal = 0.0
        self._t = 0

    @property
    def task(self) -> dict | None:
        return None if self._task is None else dict(self._task)

    def sample_tasks(self, n: int) -> list[dict]:
        return self._cheetah.sample_tasks(n, self.np_random)

    def reset_task(self, task: dict) -> None:
        self._goal = float(self._cheetah.goals([task])[0])
        self._task = {self.kind: self._goal}

    def _obs(self) -> np.ndarray:
        return self._cheetah.observe(self.data.qpos, self.data.qvel, self.data.xpos, self.data.subtree_com)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "task" in options:
            self.reset_task(options["task"])
        if ("qpos" in options) != ("qvel" in options):
            raise UserError("reset options need both 'qpos' and 'qvel' to set an exact state")
        if "qpos" in options:
            qpos, qvel = np.asarray(options["qpos"], np.float64), np.asarray(options["qvel"], np.float64)
        else:
            (qpos,), (qvel,) = self._cheetah.initial_state(1, self.np_random)
        if self._task is None:  # drawn after the state, so the state matches HalfCheetah-v5's
            self.reset_task(self.sample_tasks(1)[0])
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        mujoco.mj_forward(self.model, self.data)
        self._t = 0
        return self._obs(), {"x_position": float(self.data.qpos[0]), "task": self.task}

    def step(self, action):
        control = self._cheetah.control(action)
        x_before = self.data.qpos[0]
        self.data.ctrl[:] = control
        mujoco.mj_step(self.model, self.data, nstep=self._cheetah.frame_skip)
        if self._cheetah.velocity == "com":
            mujoco.mj_fwdPosition(self.model, self.data)  # the new state's kinematics (rllab's forward)
            mujoco.mj_fwdVelocity(self.model, self.data)
            d = self.data
            velocity = self._cheetah.com_velocity(d.cvel, d.xipos, d.subtree_com)
        else:
            velocity = (self.data.qpos[0] - x_before) / self.dt
        reward, run, ctrl_cost = self._cheetah.rewards(velocity, control, self._goal)
        self._t += 1
        info = {
            "x_position": float(self.data.qpos[0]),
            "x_velocity": float(velocity),
            "reward_run": float(run),
            "reward_forward": float(run),  # HalfCheetah-v5's name for the same term
            "reward_ctrl": -float(ctrl_cost),
        }
        return self._obs(), float(reward), False, self._t >= self.horizon, info


class HalfCheetahDirEnv(_HalfCheetahEnv):
    """Run forwards or backwards: task {"direction": +1 or -1}."""

    kind = "direction"


class HalfCheetahVelEnv(_HalfCheetahEnv):
    """Run at a target speed: task {"velocity": v}, v ~ U(velocity_range)."""

    kind = "velocity"


class _HalfCheetahBatch:
    """Every simulation of a meta-batch in one `mujoco.batch.Batch`: the BatchEnv engine.

    `reset(tasks, per_task, rng)` draws the initial states from `rng`;
    `reset(tasks, per_task, qpos=..., qvel=...)` starts from exact states instead (tests).
    """

    kind: str

    def __init__(
        self,
        ctrl_cost_weight: float = 0.05,
        obs_dim: int = 20,
        action_scale: float = 10.0,
        horizon: int = 100,
        velocity_range: tuple[float, float] | None = None,
        frame_skip: int = FRAME_SKIP,
        velocity: str = "root",
        obs_position: str = "torso",
        reset_noise: str = "gymnasium",
        nthread: int | None = None,
    ) -> None:
        self._cheetah = _Cheetah(self.kind, **_settings(locals()))
        self.obs_dim = obs_dim
        self.act_dim = self._cheetah.act_dim
        self.horizon = horizon
        if nthread is not None and (isinstance(nthread, bool) or not isinstance(nthread, int) or nthread < 1):
            raise UserError(f"HalfCheetah nthread must be a positive integer (unset: one per core), not {nthread!r}")
        self.nthread = nthread or usable_cores()
        self._batch: Batch | None = None
        self.goals = np.zeros(0)

    @property
    def nsim(self) -> int:
        return 0 if self._batch is None else self._batch.nsim

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict]:
        return self._cheetah.sample_tasks(n, rng)

    def _resize(self, nsim: int) -> None:
        """Make a Batch of `nsim` simulations, only when the count changes, and bind its arrays once."""
        if self.nsim == nsim:
            return
        self._batch = Batch(self._cheetah.model, nsim=nsim, nthread=self.nthread)
        self._qpos = self._batch.bind("qpos")
        self._qvel = self._batch.bind("qvel")
        self._ctrl = self._batch.bind("ctrl")
        self._xpos = self._batch.bind("xpos")
        self._subtree_com = self._batch.bind("subtree_com")
        if self._cheetah.velocity == "com":
            self._cvel = self._batch.bind("cvel")
            self._xipos = self._batch.bind("xipos")

    def reset(
        self,
        tasks: list[dict],
        per_task: int,
        rng: np.random.Generator | None = None,
        *,
        qpos: np.ndarray | None = None,
        qvel: np.ndarray | None = None,
    ) -> np.ndarray:
        goals = np.repeat(self._cheetah.goals(tasks), per_task)  # task-major rows
        nsim = goals.size
        if nsim == 0:
            raise UserError("a HalfCheetah batch needs at least one task and one trajectory per task")
        if qpos is None and qvel is None:
            if rng is None:
                raise UserError("reset needs an rng to draw initial states, or exact qpos and qvel")
            qpos, qvel = self._cheetah.initial_state(nsim, rng)
        elif qpos is None or qvel is None:
            raise UserError("reset needs both qpos and qvel to set exact states")
        model = self._cheetah.model
        qpos = np.broadcast_to(np.asarray(qpos, np.float64), (nsim, model.nq))
        qvel = np.broadcast_to(np.asarray(qvel, np.float64), (nsim, model.nv))
        self._resize(nsim)
        self._batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE)
        self._qpos[:] = qpos
        self._qvel[:] = qvel
        self._batch.forward()
        self.goals = goals
        return self._cheetah.observe(self._qpos, self._qvel, self._xpos, self._subtree_com)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        control = self._cheetah.control(actions)
        if control.shape != self._ctrl.shape:
            raise ValueError(f"actions must have shape {self._ctrl.shape}, got {control.shape}")
        x_before = self._qpos[:, 0].copy()
        self._ctrl[:] = control
        self._batch.step(nstep=self._cheetah.frame_skip)
        if self._cheetah.velocity == "com":
            self._batch.forward(stage=mujoco.mjtStage.mjSTAGE_VEL)  # the new state's kinematics
            velocity = self._cheetah.com_velocity(self._cvel, self._xipos, self._subtree_com)
        else:
            velocity = (self._qpos[:, 0] - x_before) / self._cheetah.dt
        reward = self._cheetah.rewards(velocity, control, self.goals)[0]
        obs = self._cheetah.observe(self._qpos, self._qvel, self._xpos, self._subtree_com)
        return obs, reward, np.zeros(self.nsim, dtype=bool)


class HalfCheetahDirBatch(_HalfCheetahBatch):
    """Batched HalfCheetah-Direction."""

    kind = "direction"


class HalfCheetahVelBatch(_HalfCheetahBatch):
    """Batched HalfCheetah-Velocity."""

    kind = "velocity"
