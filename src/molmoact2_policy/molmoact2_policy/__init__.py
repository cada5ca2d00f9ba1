"""molmoact2_policy."""
