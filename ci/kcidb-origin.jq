# Rewrite a `vanish run --kcidb` file for submission under your own KCIDB origin:
#   jq --arg origin my_lab -f ci/kcidb-origin.jq out/kcidb.json | kcidb-submit -p PROJECT -t TOPIC
# vanish writes origin "vanish"; KCIDB assigns each submitter its own origin ([a-z0-9_]+), which
# every object's "origin" and the prefix of every id must carry.
def own: sub("^[a-z0-9_]+:"; $origin + ":");
if ($origin | test("^[a-z0-9_]+$") | not) then error("origin must match ^[a-z0-9_]+$") else . end
| .checkouts |= ((. // []) | map(.id |= own | .origin = $origin))
| .builds |= ((. // []) | map(.id |= own | .checkout_id |= own | .origin = $origin))
| .tests |= ((. // []) | map(.id |= own | .build_id |= own | .origin = $origin))
