"""The worker side: `BaseTask`, the runner a worker process executes, and the example tasks.

Everything under here imports only the standard library and yptask's
protocol modules, so a worker process starts fast.
"""
