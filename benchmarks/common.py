"""Pieces shared by the speed benchmarks."""

# Every writer off, so that only training is timed (no braces: safe inside str.format templates).
QUIET = """[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[plugins.checkpoint]
enabled = false
[plugins.history]
enabled = false
"""

# One logit-KD stage of the [4, 8] digits student from a teacher file, with every writer off, so
# that only training is timed. Format with epochs, batch, lr, teacher, t, alpha, and cache
# (either "" or "methods.teacher_cache = {}").
KD_RECIPE = """
name = "kd_bench"
device = "cpu"
[data]
dataset = "digits"
batch_size = {batch}
""" + QUIET + """[stages.student]
epochs = {epochs}
eval_every = {epochs}
model = {{ arch = "cnn", channels = [4, 8] }}
optimizer = {{ name = "adam", lr = {lr} }}
teachers = ["{teacher}"]
methods.logit_kd = {{ temperature = {t}, alpha = {alpha} }}
{cache}
"""
