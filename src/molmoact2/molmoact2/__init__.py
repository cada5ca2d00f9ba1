"""molmoact2."""
