"""A fourth tool through tools.register alone: the agent can call it, the system prompt shows it, the trajectory
and the logs (grpo.step_log, eval_knowgen.tool_stats) count it; an unknown name is an error observation."""
import json

import pytest

import loopback
import rollout as R
import tools
from test_rollout_openai import Server, reply, run, tool_call  # the loopback chat server and its helpers

WEATHER = {"type": "function", "function": {"name": "weather", "description": "Today's weather in a city.",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string"}}}}}


@pytest.fixture
def weather_tool():
    seen = []

    def run_weather(tb, args, img_registry):
        seen.append(args["city"])
        return tools.ToolResult(f"Sunny in {args['city']}.")
    tools.register(WEATHER, run_weather)
    yield seen
    del tools.registry["weather"]


class Script(Server):
    def route(self, body, auth):
        turns = sum(m["role"] == "assistant" for m in body["messages"])
        plan = [tool_call("weather", city="Zubrak"), tool_call("teleport", to="Mars"),
                '<think>done</think>\n<answer>{"gen_prompt": "A sunny street.", "reference_images": []}</answer>']
        return 200, reply(plan[min(turns, 2)])


def test_registered_tool_is_callable_shown_and_counted(weather_tool, tiny_world, tmp_path, monkeypatch):
    import eval_knowgen
    import grpo
    assert tools.tool_names()[-1] == "weather"
    for style in ("paper", "compact"):
        assert "weather" in R.system_prompt("2026-01-01", R.settings(system_style=style))
    tb = tools.make_toolbox(world_dir=str(tiny_world), image_dir=str(tmp_path / "img"))
    srv = Script()
    rec = run(srv, R.tokenizer_policy(None, "loop-agent"), tb, ["WEATHER"], monkeypatch, s=R.settings(max_rounds=4),
              retries=0)["WEATHER"]
    assert weather_tool == ["Zubrak"]  # the agent's call reached the registered function
    tool_turns = [m["content"] for m in rec["messages"] if m["role"] == "user" and "<tool_response>" in m["content"]]
    assert "Sunny in Zubrak." in tool_turns[0]
    assert "[Tool Error]: unknown tool 'teleport'" in tool_turns[1] and "weather" in tool_turns[1]
    assert rec["tool_calls"]["weather"] == 1 and "teleport" not in rec["tool_calls"]
    assert eval_knowgen.tool_stats([rec])["calls_total"]["weather"] == 1
    stub = eval_knowgen._stub_record({"id": "W", "prompt": "p"}, 0, "direct", {})  # the direct / oracle rows too
    assert stub["tool_calls"] == {t: 0 for t in tools.tool_names()} and "weather" in stub["tool_calls"]
    row = {"reward": 0.0, "end": rec["end_reason"], "gen": 1, "calls": rec["tool_calls"], "tool_errors": 1,
           "reward_error": False, **{k: None for k in ("k_score", "r_text", "faithfulness", "visual_correctness",
                                                        "text_accuracy", "aesthetics")}}
    monkeypatch.setattr(grpo, "group_size", 1)
    assert grpo.step_log([row], {}, {}, {})["tool_calls_per_traj"]["weather"] == 1.0


def test_unknown_tool_is_an_error_observation_not_another_tool(tiny_world, tmp_path):
    tb = tools.make_toolbox(world_dir=str(tiny_world), image_dir=str(tmp_path / "img"))
    r = tools.run_tool(tb, "brows", {"url": "https://miniworld.example/wiki/X", "query": "q"}, {})
    assert r.error and r.text.startswith("[Tool Error]: unknown tool 'brows'")
