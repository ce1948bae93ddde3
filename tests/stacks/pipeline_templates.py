"""Reading a synthesized CodePipeline stack: its stages, each action's CodeBuild project, the
environment and the IAM statements of that project (the image pipeline's and its snapshot stage's tests)."""

from __future__ import annotations

from typing import Any


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def project_env(project: dict[str, Any]) -> dict[str, Any]:
    return {v["Name"]: v["Value"] for v in project["Properties"]["Environment"]["EnvironmentVariables"]}


def pipeline_stages(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (pipeline,) = resources(template, "AWS::CodePipeline::Pipeline").values()
    assert pipeline["Properties"]["PipelineType"] == "V2"
    return {stage["Name"]: stage for stage in pipeline["Properties"]["Stages"]}


def action_projects(template: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Every CodeBuild action by name: (the action, its project)."""
    out = {}
    for stage in list(pipeline_stages(template).values())[1:]:
        for action in stage["Actions"]:
            out[action["Name"]] = (action, template["Resources"][action["Configuration"]["ProjectName"]["Ref"]])
    return out


def policy_statements_of(template: dict[str, Any], project: dict[str, Any]) -> list[dict[str, Any]]:
    role = project["Properties"]["ServiceRole"]["Fn::GetAtt"][0]
    statements: list[dict[str, Any]] = []
    for policy in resources(template, "AWS::IAM::Policy").values():
        if {"Ref": role} in policy["Properties"]["Roles"]:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
