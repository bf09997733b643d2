"""The sandbox: Landlock, the policy every process that runs a model confines itself to, and the
child processes (the model check, the drawing) that run a model on the login node."""
