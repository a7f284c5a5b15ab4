"""Pure frame -> frame functions of the warehouse: no I/O, so any frame can be fed in."""
