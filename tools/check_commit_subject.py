"""commit-msg hook (.pre-commit-config.yaml): a commit subject of at most 72 characters, so that
`git log --oneline` stays readable; the why goes in the body."""
import sys

LIMIT = 72

if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        subject = f.readline().rstrip("\n")
    if len(subject) > LIMIT:
        sys.exit(f"commit subject of {len(subject)} characters: keep it to {LIMIT} and put the why in the body")
