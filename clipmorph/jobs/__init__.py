"""The job contract that the API and the workers share, so that neither imports the other.

files: a job's folder (input, output, partial files) and expiry; queue: how a job is enqueued and
what its result is; settle: how a job ends exactly once (finished or cancelled); models: the
process's cache of loaded models, used by workers and by the API's small-image path.
"""
