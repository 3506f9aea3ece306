"""POSE: roles, losses, discriminator heads and the training phases."""

from pose_mcore.pose.phase import Phase
from pose_mcore.pose.phase1 import Phase1
from pose_mcore.pose.phase2 import Phase2
from pose_mcore.pose.roles import Roles
from pose_mcore.pose.teacher import TeacherPhase

__all__ = ["Phase", "Phase1", "Phase2", "Roles", "TeacherPhase"]
