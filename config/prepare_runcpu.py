# data/miniworld/prepare.py for runcpu.sh: a bigger world (in mini-world runs a 1,800-entity world taught copying
# where a 600-entity one was memorised) and every SFT candidate item; top_k 3 in the oracle's hops keeps the
# trajectories short (every hop target ranks <= 2 here). runcpu.sh passes --out_dir.
n_countries = 100   # -> 2,000 entities; 86 SFT country clusters -> ~1,720 SFT items
n_sft = 0           # all candidates
n_rl = 120
n_bench = 80
top_k = 3
