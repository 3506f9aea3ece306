"""Flow matching: noising, time shift, timestep sampling; teacher and student samplers."""

from pose_mcore.diffusion.flow import (
    add_noise,
    eps_from_velocity,
    model_timestep,
    sample_t,
    shift_time,
    velocity_target,
    x0_from_velocity,
)
from pose_mcore.diffusion.samplers import cfg_velocity, euler_sample, guided, student_sample, time_grid

__all__ = ["add_noise", "cfg_velocity", "eps_from_velocity", "euler_sample", "guided", "model_timestep", "sample_t",
           "shift_time", "student_sample", "time_grid", "velocity_target", "x0_from_velocity"]
