"""Where batches run: implementations of `bot.core.executor.Executor`. `local` runs them on a thread
of this machine that owns torch and the GPU; remote GPU workers would sit beside it."""
