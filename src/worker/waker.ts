/**
 * The pause of a batch claimer's loop (embedding, rerank, moderation): it sleeps until a
 * notification wakes it or a poll interval passes, whichever is first. A wake that arrives while
 * the loop is busy is not lost: the loop calls `arm()` before it claims, and the next `sleep`
 * returns at once if anything woke it since.
 */
export class Waker {
  private woken = false;
  private wakeUp: (() => void) | null = null;

  /** Work may be waiting (a notification named the model, or the claimer is stopping). */
  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  /** Called before looking for work: only wakes after this one cut the next sleep short. */
  arm(): void {
    this.woken = false;
  }

  /** Resolves true when woken, false when `ms` passed without a wake. */
  sleep(ms: number): Promise<boolean> {
    if (this.woken) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => done(false), ms);
      const done = (woken: boolean) => {
        clearTimeout(timer);
        this.wakeUp = null;
        resolve(woken);
      };
      this.wakeUp = () => done(true);
    });
  }
}
