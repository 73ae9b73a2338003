"""Is SmolLM2-135M-Instruct a useful judge of its own answers? `llm_judge` measured on the samples
that bench/smollm2.py recorded (no new generation; the judge reads each sample once).

For the first --questions questions of the records, each of the N recorded samples is judged by
`llm_judge` with SmolLM2 itself as the judge: P(yes) against P(no) as the next token after the
question, the sample and "is this answer correct?". Two templates: the scorer's default (plain
text) and the same question as a user turn of the model's chat template. It reports

- calibration: samples grouped by P(yes), with the share of them that is right;
- the within-problem AUC (for each question with both right and wrong samples, the probability
  that a right sample gets a higher P(yes) than a wrong one; ties count half), and the pooled AUC;
- selection with the judge over the same samples: best-of-N and weighted majority with
  `llm_judge`, against greedy and self-consistency, with the exact McNemar p against greedy.

    python bench/smollm2_judge.py --records r.jsonl [--questions 60]
"""

from __future__ import annotations

from _common import arguments, finish, mcnemar, table, weighted_vote

import json
import sys
from collections import Counter

import metagen_plugins
from metagen_hooks import Candidate
from metagen_plugins.demo.questions import questions

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from demo_verifier import pick_best, pooled_auc, within_problem_auc  # noqa: E402
from smollm2 import answer_of  # noqa: E402

QUESTION = "Question: {prompt}\nProposed answer: {answer}\nIs the proposed answer correct? Answer Yes or No."
BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0001)


def chat_template(tokenizer) -> str:
    """QUESTION as a user turn of the model's chat template, ending where the reply starts."""
    marker_p, marker_a = "\x00PROMPT\x00", "\x00ANSWER\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION.format(prompt=marker_p, answer=marker_a)}],
        tokenize=False, add_generation_prompt=True)
    text = text.replace("{", "{{").replace("}", "}}")
    return text.replace(marker_p, "{prompt}").replace(marker_a, "{answer}")


def main() -> None:
    def extra(parser):
        parser.add_argument("--records", nargs="+", required=True, help="records of bench/smollm2.py")
        parser.add_argument("--questions", type=int, default=None, help="the first K questions (default 60, quick 8)")

    args = arguments(__doc__, extra)
    count = args.questions or (8 if args.quick else 60)
    records = sorted((json.loads(line) for p in args.records for line in open(p, encoding="utf-8") if line.strip()),
                     key=lambda r: r["index"])[:count]
    count = len(records)
    seed = records[0]["seed"]
    asked = questions(max(r["index"] for r in records) + 1, seed=seed)
    prompts = [asked[r["index"]].prompt for r in records]
    texts = [r["samples"]["texts"] for r in records]
    labels = [[answer_of(t) == r["answer"] for t in ts] for r, ts in zip(records, texts)]

    from metagen_plugins import evaluate
    from metagen_plugins.models import load_model, load_tokenizer
    from metagen_plugins.models import resolve

    path = resolve(evaluate.DEFAULT_MODEL)
    model, tokenizer = load_model(path), load_tokenizer(path)
    registry = metagen_plugins.get_registry()
    info = registry.get("scorers", "llm_judge")
    correct = {"greedy": [answer_of(r["greedy"]["texts"][0]) == r["answer"] for r in records]}
    n = len(texts[0])
    votes = [Counter(a for a in map(answer_of, ts) if a is not None).most_common(1) for ts in texts]
    correct[f"self_consistency@{n}"] = [bool(v) and v[0][0] == r["answer"] for r, v in zip(records, votes)]
    calibration, aucs = [], []
    for name, template in (("plain", None), ("chat", chat_template(tokenizer))):
        judge = metagen_plugins.build(info, {"template": template} if template else {},
                                      context={"model": model, "tokenizer": tokenizer})
        scores = []
        for prompt, ts in zip(prompts, texts):
            scores.append(judge.score(prompt, [Candidate(prompt, t, finish_reason="stop") for t in ts]))
        print(f"  judged with the {name} template", file=sys.stderr, flush=True)
        correct[f"best_of_{n}[llm_judge, {name}]"] = [ls[pick_best(ss)] for ls, ss in zip(labels, scores)]
        correct[f"weighted_majority@{n}[llm_judge, {name}]"] = [
            weighted_vote(ts, ss, answer_of) == r["answer"] for r, ts, ss in zip(records, texts, scores)]
        within, both = within_problem_auc(labels, scores)
        aucs.append({"template": name, "within_problem_auc": within, "questions_with_both": both,
                     "pooled_auc": pooled_auc(labels, scores),
                     "mean_p_yes": sum(map(sum, scores)) / sum(map(len, scores))})
        pairs = [(s, l) for ss, ls in zip(scores, labels) for s, l in zip(ss, ls)]
        for low, high in zip(BINS, BINS[1:]):
            inside = [l for s, l in pairs if low <= s < high]
            calibration.append({"template": name, "P(yes)": f"{low:.1f}-{min(high, 1):.1f}", "samples": len(inside),
                                "right": sum(inside), "share_right": sum(inside) / len(inside) if inside else None})

    rows = [{"strategy": k, "accuracy": sum(v) / count, "correct": sum(v),
             "p_vs_greedy": None if k == "greedy" else mcnemar(correct["greedy"], v)} for k, v in correct.items()]
    print(f"SmolLM2-135M-Instruct judging its own {n} samples per question, {count} questions (seed {seed})")
    table(rows, ["strategy", "accuracy", "correct", "p_vs_greedy"])
    print("\ncalibration: samples by the judge's P(yes), and the share of them that is right")
    table(calibration, ["template", "P(yes)", "samples", "right", "share_right"])
    print("\nAUC of P(yes) for right vs wrong samples")
    table(aucs, ["template", "within_problem_auc", "questions_with_both", "pooled_auc", "mean_p_yes"])
    finish("smollm2_judge", {"questions": count, "n": n, "rows": rows, "calibration": calibration, "auc": aucs})


if __name__ == "__main__":
    main()
