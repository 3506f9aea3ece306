"""Other projects' parameter names, mapped to pose_mcore's own."""
