"""``celery-chatops demo``: a sample fleet (private Redis, a misbehaving worker) and the bot.

Not part of the product's runtime path: ``run`` never imports this package. Its parts are
also what the test suite and the benchmarks start real processes with.
"""
