"""Cron timers: their schedule, the lease that picks one leader, the leader that fires them."""
