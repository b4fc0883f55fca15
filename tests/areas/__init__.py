"""vml/areas: the contract every kind of working area keeps, and what is particular to each kind."""
