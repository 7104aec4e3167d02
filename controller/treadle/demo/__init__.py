"""`treadle demo`: the whole system on one machine, on its own."""
