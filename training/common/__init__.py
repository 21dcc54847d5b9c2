"""What the training scripts (train_scratch, finetune) share, one job a module:

    run.py       the run folder (config.toml, log.jsonl, checkpoint.pt, samples/) and its clock;
                 what a script's train() and main() wrap around the work
    loop.py      a training loop's resumable state (step, optimizer, LR schedule, data order, random
                 state) and its step timer
    data.py      images: loading, a dataset as one uint8 tensor, shuffled batches, sample grids
    networks.py  AdamW, moving a pipeline, latents and token ids computed once
"""
