"""`attngen bench`: timings on a GPU, side by side with FlexAttention and PyTorch SDPA.

kernels  one pattern per row: forward kernels against Flex and SDPA (`attngen bench`)
dynamic  dynamic patterns: Flex given attngen's estimate (`--inputs structured`)
serve    forward + backward (`--backward`) and decode (`--decode`)
model    a whole model with a plan, prefill and decode end to end (`--model`)
flex     the plan as FlexAttention block masks, for `model`
"""
