"""End-to-end code_interpreter on the real model, one Responses call each: a sum the model cannot
do in its head, and a CSV uploaded to a container read by the code."""

from __future__ import annotations

import re

import openai
import pytest
from openai.types.responses import ResponseCodeInterpreterToolCall

pytestmark = pytest.mark.e2e

PRIMES_SUM = 3682913  # the sum of the first 1,000 primes
SALES = "region,amount\n" + "".join(f"r{i},{(i * 37) % 101 + 10}\n" for i in range(40))
SALES_TOTAL = sum((i * 37) % 101 + 10 for i in range(40))


def numbers(text: str) -> set[int]:
    """The integers a text states, with or without thousands separators."""
    return {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text) if n.replace(",", "").isdigit()}


def calls(response: openai.types.responses.Response) -> list[ResponseCodeInterpreterToolCall]:
    return [i for i in response.output if isinstance(i, ResponseCodeInterpreterToolCall)]


def logs(call: ResponseCodeInterpreterToolCall) -> str:
    return "".join(o.logs for o in call.outputs or [] if o.type == "logs")


def test_the_sum_of_the_first_thousand_primes(client: openai.OpenAI, model: str) -> None:
    r = client.responses.create(
        model=model, temperature=0, max_output_tokens=400, include=["code_interpreter_call.outputs"],
        input="Use python to print the sum of the first 1000 prime numbers: 2, 3, 5, 7, ... up to 7919, the 1000th "
              "prime.",
        tools=[{"type": "code_interpreter", "container": {"type": "auto"}}], tool_choice={"type": "code_interpreter"})
    assert r.status == "completed", r
    ran = calls(r)
    assert ran and ran[0].container_id.startswith("cntr_")
    assert any(str(PRIMES_SUM) in logs(c) for c in ran), [(c.code, logs(c)) for c in ran]
    assert PRIMES_SUM in numbers(r.output_text), r.output_text


def test_a_csv_uploaded_to_a_container_is_read_by_the_code(client: openai.OpenAI, model: str) -> None:
    container = client.containers.create(name="sales")
    uploaded = client.containers.files.create(container.id, file=("sales.csv", SALES.encode()))
    assert uploaded.path == "/mnt/data/sales.csv"
    r = client.responses.create(
        model=model, temperature=0, max_output_tokens=400, include=["code_interpreter_call.outputs"],
        input="The file sales.csv has a header row (region,amount). Use python with csv.DictReader to read it and "
              "print the total of the amount column.",
        tools=[{"type": "code_interpreter", "container": container.id}], tool_choice={"type": "code_interpreter"})
    assert r.status == "completed", r
    ran = calls(r)
    assert ran and all(c.container_id == container.id for c in ran)
    assert any("sales.csv" in (c.code or "") for c in ran)
    assert any(str(SALES_TOTAL) in logs(c) for c in ran), [(c.code, logs(c)) for c in ran]
    assert SALES_TOTAL in numbers(r.output_text), r.output_text
