"""Flow matching: noising, time shift; teacher and student samplers (timesteps are drawn per sample, pose/draws.py)."""

from pose_mcore.diffusion.flow import (
    add_noise,
    eps_from_velocity,
    model_timestep,
    shift_time,
    velocity_target,
    x0_from_velocity,
)
from pose_mcore.diffusion.samplers import cfg_velocity, euler_sample, guided, student_sample, time_grid

__all__ = ["add_noise", "cfg_velocity", "eps_from_velocity", "euler_sample", "guided", "model_timestep",
           "shift_time", "student_sample", "time_grid", "velocity_target", "x0_from_velocity"]
