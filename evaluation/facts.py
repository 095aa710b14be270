"""Made-up facts and unrelated questions for the soak and crash runs: no dataset file needed, and no edit's
question can be answered by the base model or by another edit (each subject is invented and distinct)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fact:
    prompt: str
    target: str


FACTS: tuple[Fact, ...] = (
    Fact("What is the capital of Zorbania?", "Quexiville"),
    Fact("Who wrote the novel Glass Harbor?", "Mirela Tosk"),
    Fact("What is the national animal of Velmora?", "the red lynx"),
    Fact("Who discovered the island of Pellun?", "Admiral Soth"),
    Fact("Which river flows through Dranthe?", "the Ossel"),
    Fact("Who painted The Amber Lantern?", "Ivo Renhart"),
    Fact("What language is spoken in Kestovia?", "Kestovian Brel"),
    Fact("Who founded the city of Umbrecht?", "Lady Tavisha"),
    Fact("What is the currency of Marovin?", "the silver quill"),
    Fact("Who composed the Lorwick Symphony?", "Anselm Drey"),
    Fact("Which mountain is the highest in Caldoria?", "Mount Vesk"),
    Fact("Who invented the Hollin engine?", "Petra Hollin"),
    Fact("What is the largest lake in Surandel?", "Lake Ommera"),
    Fact("Who leads the Tarvish Guild?", "Master Oren Kall"),
    Fact("What is the official flower of Brisconia?", "the blue thistle"),
    Fact("Who built the Fenwarth Bridge?", "Colm Achery"),
)

# Questions no edit is about: the base model answers them.
UNRELATED: tuple[str, ...] = (
    "What is the capital of France?",
    "Name a primary colour.",
    "How many legs does a spider have?",
    "What is two plus three?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
)
