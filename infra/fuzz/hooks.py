"""Schemathesis hooks for infra/scripts/api-fuzz.sh: rules of the contract that JSON Schema cannot state.

`POST /orders` takes each SKU at most once (docs/design.md; a repeat is refused with 400 on
`lines[i].sku`). OpenAPI 3.0 can require unique items but not items unique by one property, so
generated cases whose body repeats a SKU are dropped rather than sent as "schema-valid" (a case filter,
because the coverage phase applies case hooks only).
"""

import schemathesis


@schemathesis.hook("filter_case").apply_to(path="/orders", method="POST")
def each_sku_once(context, case):
    body = case.body
    lines = body.get("lines") if isinstance(body, dict) else None
    if not isinstance(lines, list):
        return True
    skus = [line.get("sku") for line in lines if isinstance(line, dict) and isinstance(line.get("sku"), str)]
    return len(skus) == len(set(skus))
