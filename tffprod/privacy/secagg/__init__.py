"""Secure aggregation between sites: one round of Bonawitz et al. 2017, "Practical Secure Aggregation".

Sites are the participants, the coordinator is the server. Each participant u holds a vector x_u of
integers mod 2**bits. (0) It advertises two fresh X25519 public keys, signed with its certificate
key. (1) It splits a fresh self-mask seed b_u and its masking private key s_u t-of-n (Shamir) and
sends each peer its shares, AES-GCM-encrypted under a key agreed on the "c" keys. (2) It sends
y_u = x_u + PRG(b_u) + sum over peers v of +-PRG(s_uv), s_uv agreed on the "s" keys; the pairwise
masks cancel in the sum. (3) Told who survived and who dropped, it reveals its shares of b_v for
each survivor and of s_v for each dropped v; the coordinator removes every mask and learns only the
sum of the survivors' inputs.

Threat model: the coordinator sees every message and may deviate; sites may collude with it. The
sum of at least t inputs is all it learns while 2t > n + c for c colluding sites (t > n/2 is
enforced; each honest site answers the unmask step once and never for both b_v and s_v).
Advertisements are signed under the federation CA, so keys cannot be substituted; shares are
end-to-end encrypted. Not covered: the paper's consistency round, dishonest sites' wrong shares or
inputs (reconstruction fails or the sum is wrong), availability, and what the sum itself reveals
(add DP noise). Pure: no TensorFlow, no I/O.
"""

from tffprod.privacy.secagg.aggregator import Aggregator
from tffprod.privacy.secagg.errors import SecAggError
from tffprod.privacy.secagg.keys import Advertisement, RoundKeys, shared_seed, sign_advertisement, verify_advertisement
from tffprod.privacy.secagg.masks import add_mod, prg, sub_mod
from tffprod.privacy.secagg.protocol import EncryptedShare, Participant, UnmaskResponse
from tffprod.privacy.secagg.shamir import combine, split

__all__ = ["Advertisement", "Aggregator", "EncryptedShare", "Participant", "RoundKeys", "SecAggError",
           "UnmaskResponse", "add_mod", "combine", "prg", "shared_seed", "sign_advertisement", "split", "sub_mod",
           "verify_advertisement"]
