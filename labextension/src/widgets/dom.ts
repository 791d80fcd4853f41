/** A tiny DOM helper shared by the extension's widgets. */

/** A new element with an optional class name and text. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

/** The message of an error (an `ApiError` carries the server's explanation). */
export function errorText(error: unknown): string {
  return String((error as Error).message ?? error);
}
