"""Compile kernels/nf4_triton.py's dequantize for sm_90 without a GPU (triton's own ptxas) and count
its SASS instructions, plain and STRIDED, as the launcher specialises them for 7B's gate/up
(pointers 16-byte aligned; n, nbytes, in_features = 3,584 and out_row_stride divisible by 16;
blocks_per_row = 56 is not). Needs triton (3.6 here).

    python count_sass.py /path/to/repo
"""
import collections
import re
import sys

sys.path.insert(0, sys.argv[1])
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import nf4_triton as k  # noqa: E402

fn = k._nf4_dequantize_kernel
names = fn.arg_names
types = {"PACKED": "*u8", "ABSMAX": "*u8", "CODE": "*fp32", "NESTED_ABSMAX": "*fp32", "NESTED_CODE": "*fp32",
         "OFFSET": "*fp32", "OUT": "*bf16"}
consts = {"BS": 64, "BLOCKS_PER_PROGRAM": 128, "DOUBLE_QUANT": True, "NESTED_BS": 256}
for strided in (False, True):
    sig = {n: types.get(n, "constexpr" if n.isupper() else "i32") for n in names}
    constexprs = {(names.index(n),): v for n, v in dict(consts, STRIDED=strided).items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n].startswith("*") or n in ("n", "nbytes", "in_features", "out_row_stride")}
    c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "enable_fp_fusion": False})
    ins = [line.split("\t", 1)[1].strip() for line in c.asm["sass"].splitlines()
           if "\t" in line and re.match(r"^[-0-9a-fY:]+\t", line)]
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", i).split()[0].split(".")[0] for i in ins if i)
    stores = sorted(set(re.findall(r"STG[.\w]*", c.asm["sass"])))
    print(f"STRIDED={strided}: {len(ins)} SASS instructions; CALL {ops['CALL']}, IMAD {ops['IMAD']}, stores {stores}")
