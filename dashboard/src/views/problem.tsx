/** A refused call, told in a sentence, with "Try again" when trying again may work. */
import type { ComponentChildren } from "preact";

import type { Problem } from "../api.js";

export function ProblemNote({
  problem,
  onRetry,
  children,
}: {
  problem: Problem | null;
  onRetry?: () => void;
  children?: ComponentChildren;
}) {
  if (!problem) return null;
  return (
    <div class="problem" role="alert">
      <p>{problem.sentence}</p>
      {children}
      {problem.retryable && onRetry ? (
        <button type="button" onClick={onRetry}>
          Try again
        </button>
      ) : null}
    </div>
  );
}
